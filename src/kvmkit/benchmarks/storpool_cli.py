"""The table `kvmkit snapshot bench --storage storpool` prints (the measuring is in benchmarks/storpool.py)."""

from __future__ import annotations

from pathlib import Path

from kvmkit.output import console, err_console, print_json, print_table


def bench_storpool(lab_path: Path, uri: str, disks: str, rounds: int, api_latency_ms: float, json_out: bool) -> None:
    from kvmkit.benchmarks import storpool
    from kvmkit.benchmarks.snapshot import parse_counts

    count = 4 if disks == "1,4,16" else max(parse_counts(disks))  # the file bench's default list: take 4 here
    say = err_console.print if json_out else console.print
    r = storpool.run(lab_path, uri, count, rounds, api_latency_ms, progress=lambda m: say(f"[dim]bench:[/] {m}"))
    if json_out:
        print_json(r)
        return
    print_table(f"StorPool driver on the FAKE StorPool API, {r.disks} disks, {r.accel.upper()}, "
                f"API latency {r.api_latency_ms:g} ms (median of {r.rounds})",
                ["measure", "ms", "vs one call"],
                [("one VolumeSnapshot call (anchor)", r.single_call_median_ms, "1.00×"),
                 (f"{r.disks} calls concurrently, inside the freeze", r.quiesced_storage_median_ms,
                  f"{r.storage_vs_single:.2f}× (target ≤ 1.2×)"),
                 (f"{r.disks} calls in a loop (what concurrency avoids)", r.sequential_storage_median_ms,
                  f"{r.sequential_vs_single:.2f}×"),
                 ("whole freeze window (agent freeze → thaw)", r.quiesced_freeze_median_ms,
                  f"{r.freeze_vs_single:.2f}×"),
                 ("group snapshot of every disk", r.group_median_ms, "")])
    console.print(f"group snapshot: {r.group_api_calls} API call(s) ({r.group_snapshot_calls} VolumesGroupSnapshot), "
                  f"freeze {r.group_freeze_ms:g} ms, guest seen frozen: {'yes' if r.group_guest_frozen else 'no'}")
    console.print(f"peak RSS {r.peak_rss_mib} MiB, {r.seconds} s")
