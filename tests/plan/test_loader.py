"""Bad plan files give one line naming the file, the line and the key; good ones load (TOML and YAML)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import yaml

from kvmkit.errors import InvalidInput
from kvmkit.plan.loader import load_plan


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing `needle`: the test finds the line, the loader must agree."""
    hits = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[occurrence - 1]


def write(tmp_path: Path, text: str, name: str = "plan.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(InvalidInput) as caught:
        load_plan(path)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_example_loads(example_plan):
    assert len(example_plan.chassis) == 4 and len(example_plan.demand) == 5
    assert sum(d.count for d in example_plan.demand) == 10_000


def test_negative_price_names_file_line_and_key(tmp_path, example_text):
    text = example_text.replace("price = 2300.0", "price = -2300.0")
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(text, 'price = -2300.0')}: cpus[1].price: ")
    assert "greater than or equal to 0" in message and "-2300" in message


def test_zero_lifetime_is_rejected(tmp_path, example_text):
    text = example_text.replace("lifetimes_months = [36, 60]", "lifetimes_months = [36, 0]")
    path = write(tmp_path, text)
    assert error_of(path).startswith(f"{path}:{line_of(text, 'lifetimes_months')}: site.lifetimes_months[1]: ")


def test_chassis_with_no_cpu_that_fits_points_at_the_chassis(tmp_path, example_text):
    text = example_text.replace('cpu_socket = "LGA4677"', 'cpu_socket = "AM5"')
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(text, '[[chassis]]', 4)}: chassis[3]: no CPU fits chassis")


def test_unknown_key_suggests_the_unit_named_field(tmp_path, example_text):
    text = example_text.replace("max_w = 160.0", "max_kw = 0.16", 1)
    path = write(tmp_path, text)
    message = error_of(path)
    assert message == f"{path}:{line_of(text, 'max_kw =')}: chassis[1].max_kw: unknown key (did you mean 'max_w'?)"


def test_watts_in_a_kilowatt_field_is_caught(tmp_path, example_text):
    text = example_text.replace("rack_power_limit_kw = 12.0", "rack_power_limit_kw = 12000")
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(text, 'rack_power_limit_kw')}: site.rack_power_limit_kw: ")
    assert "in kW, not W" in message


def test_idle_above_max_watts_is_rejected(tmp_path, example_text):
    text = example_text.replace("idle_w = 70.0", "idle_w = 700.0")
    message = error_of(write(tmp_path, text))
    assert "chassis[0]" in message and "idle_w (700.0) is above max_w (120.0)" in message


def test_missing_section_is_named(tmp_path, example_text):
    start = example_text.index("[policy]")
    end = example_text.index("# ---- building blocks")
    message = error_of(write(tmp_path, example_text[:start] + example_text[end:]))
    assert message.endswith("policy: required key is missing")


def test_invalid_toml_is_one_line(tmp_path, example_text):
    message = error_of(write(tmp_path, example_text.replace("pue = 1.4", "pue = = 1.4")))
    assert "not valid TOML" in message


def test_yaml_errors_point_at_the_yaml_line(tmp_path, example_text):
    data = tomllib.loads(example_text)
    data["drives"][2]["iops"] = -5
    text = yaml.safe_dump(data, sort_keys=False)
    path = write(tmp_path, text, "plan.yaml")
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(text, 'iops: -5')}: drives[2].iops: ")


def test_yaml_plan_equals_the_toml_plan(tmp_path, example_text, example_plan):
    path = write(tmp_path, yaml.safe_dump(tomllib.loads(example_text)), "plan.yml")
    assert load_plan(path) == example_plan


def test_duplicate_names_are_rejected(tmp_path, example_text):
    text = example_text.replace('name = "64G"', 'name = "32G"')
    path = write(tmp_path, text)
    line = line_of(text, 'name = "32G"', 2)
    assert error_of(path).startswith(f"{path}:{line}: dimms[1].name: duplicate name '32G'")


def test_cpu_ratio_from_congestion_advice(tmp_path, example_text):
    (tmp_path / "advise.json").write_text(json.dumps({"cpu_ratio": 6.5, "slo": "p99 steal < 5%"}))
    text = example_text.replace('# cpu_ratio_from = "advise.json"', 'cpu_ratio_from = "advise.json"')
    assert load_plan(write(tmp_path, text)).policy.cpu_ratio == 6.5
    (tmp_path / "advise.json").write_text(json.dumps({"nothing": 1}))
    assert "no positive 'cpu_ratio'" in error_of(write(tmp_path, text))


def test_missing_file_is_one_line(tmp_path):
    assert "cannot read plan file" in error_of(tmp_path / "nope.toml")


def test_every_price_line_of_the_example_is_located_when_negative(tmp_path, example_text):
    """The TOML locator, exhaustively: each `price = …` line made negative is reported at that very line."""
    lines = example_text.splitlines()
    price_lines = [n for n, line in enumerate(lines) if line.startswith("price = ")]
    assert len(price_lines) == 27  # 4 chassis + 10 CPUs + 5 DIMMs + 5 drives + 3 licences
    for index in price_lines:
        mutated = list(lines)
        mutated[index] = mutated[index].replace("price = ", "price = -", 1)
        path = write(tmp_path, "\n".join(mutated))
        message = error_of(path)
        assert message.startswith(f"{path}:{index + 1}: "), message
        assert ".price: Input should be greater than or equal to 0" in message
