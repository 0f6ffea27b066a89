"""The live-pin plan of `tune vm apply`/`rollback` (pure): which pins change, and which fixes are pins only."""

from __future__ import annotations

from kvmkit.tune.vm.edits import XmlEdit
from kvmkit.tune.vm.live import LivePin, Pins, pins_of, pins_only, plan

XML = """<domain type='kvm'><name>a</name><vcpu>2</vcpu><cputune>
<vcpupin vcpu='0' cpuset='2'/><vcpupin vcpu='1' cpuset='3'/><emulatorpin cpuset='0-1'/>
<iothreadpin iothread='1' cpuset='1'/></cputune></domain>"""


def test_pins_are_read_from_cputune_and_a_domain_without_it_has_none():
    assert pins_of(XML) == Pins(vcpus={0: "2", 1: "3"}, emulator="0-1", iothreads={1: "1"})
    assert pins_of("<domain><name>b</name></domain>") == Pins()


def test_the_plan_sets_what_changed_and_returns_a_dropped_pin_to_every_cpu():
    before = Pins(vcpus={0: "2", 1: "3"}, emulator="0-1", iothreads={1: "1"})
    after = Pins(vcpus={0: "2", 1: "4"}, emulator="", iothreads={1: "1", 2: "1"})
    assert plan(before, after) == [LivePin("vcpu", 1, "4"), LivePin("emulator", 0, ""), LivePin("iothread", 2, "1")]
    assert plan(after, after) == []
    assert str(LivePin("emulator", 0, "")) == "emulator → any CPU"


def test_only_a_fix_made_of_pins_alone_needs_no_restart():
    pin = XmlEdit(("cputune", "vcpupin[@vcpu='0']"), {"vcpu": "0", "cpuset": "1"})
    emulator = XmlEdit(("cputune", "emulatorpin"), {"cpuset": "0"})
    iothreads = XmlEdit(("iothreads",), text="1")
    quota = XmlEdit(("cputune", "period"), text="100000")
    assert pins_only((pin, emulator)) and not pins_only((pin, iothreads)) and not pins_only((quota,))
    assert not pins_only(())
