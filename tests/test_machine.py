"""What the machine can do and what pathodet chooses from it: precision, threads, the
demo's calibration ladder. The CPU-dependent facts are checked in child processes with
torch and oneDNN restricted to AVX2 kernels, so they hold on every CPU generation."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from pathodet.core import machine
from pathodet.core.machine import configure_threads, resolve_precision
from pathodet.demo.calibrate import LADDER_RATIO, calibrated_speed, ladder_steps

REPO = Path(__file__).resolve().parents[1]
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _child(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, timeout=120)  # fmt: skip


# -- precision -----------------------------------------------------------------------------


@pytest.fixture
def fresh_announcements(monkeypatch):
    monkeypatch.setattr(machine, "_ANNOUNCED", set())


def test_auto_is_fp32_where_bf16_is_emulated_and_says_why_once(monkeypatch, fresh_announcements):
    monkeypatch.setattr(machine, "cpu_bf16_native", lambda: (False, "no AMX here"))
    said: list[str] = []
    assert resolve_precision("auto", "cpu", log=said.append) == "fp32"
    assert resolve_precision("auto", "cpu", log=said.append) == "fp32"
    assert said == ["pathodet: precision auto -> fp32 on cpu: no AMX here"]


def test_auto_is_bf16_where_native(monkeypatch, fresh_announcements):
    monkeypatch.setattr(machine, "cpu_bf16_native", lambda: (True, "the CPU has AMX"))
    said: list[str] = []
    assert resolve_precision("auto", "cpu", log=said.append) == "bf16"
    assert said == ["pathodet: precision auto -> bf16 on cpu: the CPU has AMX"]


def test_explicit_bf16_on_an_emulating_cpu_warns_but_is_honoured(monkeypatch, fresh_announcements):
    monkeypatch.setattr(machine, "cpu_bf16_native", lambda: (False, "no AMX here"))
    with pytest.warns(UserWarning, match="emulated here .no AMX here., about 50x slower"):
        assert resolve_precision("bf16", "cpu") == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: no second warning
        assert resolve_precision("bf16", "cpu") == "bf16"
        assert resolve_precision("fp32", "cpu") == "fp32"  # never a question


def test_unknown_precision_is_an_error():
    with pytest.raises(ValueError, match="auto, fp32 or bf16, got 'fp16'"):
        resolve_precision("fp16")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 CPUs only")
def test_avx2_kernels_mean_no_native_bf16():
    """With torch and oneDNN limited to AVX2 (the emulating CPUs' situation), the detection
    says so whatever this CPU is, and ``auto`` picks fp32."""
    code = ("import json, torch; from pathodet.core.machine import cpu_bf16_native, "
            "resolve_precision; ok, why = cpu_bf16_native(); "
            "print(json.dumps([torch.backends.cpu.get_cpu_capability(), ok, why, "
            "resolve_precision('auto', 'cpu', log=lambda m: None)]))")  # fmt: skip
    res = _child(code, AVX2_ONLY)
    assert res.returncode == 0, res.stderr
    capability, native, why, chosen = json.loads(res.stdout.strip().splitlines()[-1])
    assert capability == "AVX2"
    assert native is False and ("AVX2" in why or "neither" in why)
    assert chosen == "fp32"


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "capability", "onednn", "native", "why"),
    [
        (False, False, "AVX512", True, False, "neither AVX-512-BF16 nor AMX"),
        (True, False, "AVX512", True, True, "AVX-512-BF16"),
        (False, True, "AVX512", True, True, "AMX"),
        (True, True, "AVX2", True, False, "limited to AVX2"),  # ATEN_CPU_CAPABILITY=avx2
        (True, True, "AVX512", False, False, "ONEDNN_MAX_CPU_ISA"),
    ],
)
def test_native_bf16_needs_the_instructions_and_both_libraries(
    monkeypatch, avx512_bf16, amx, capability, onednn, native, why
):
    """Each CPU situation, simulated through torch's own flags."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    got, reason = machine.cpu_bf16_native.__wrapped__()  # uncached
    assert got is native and why in reason


def test_machine_record_names_the_cpu_and_capability():
    r = machine.machine_record("fp32")
    assert r["precision"] == "fp32"
    assert r["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert r["cpu_model"] and r["cores"] >= 1 and r["torch_threads"] >= 1
    line = machine.machine_line(r)
    assert r["cpu_model"] in line and r["cpu_capability"] in line


# -- threads -------------------------------------------------------------------------------


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_are_the_usable_cores_shared_among_local_ranks(monkeypatch, keep_threads):
    monkeypatch.setattr(machine, "usable_cores", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert configure_threads() == 8 and torch.get_num_threads() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # torchrun, 3 processes on this machine
    assert configure_threads() == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert configure_threads() == 1
    assert configure_threads(3) == 3 and torch.get_num_threads() == 3  # explicit wins


def test_a_users_omp_num_threads_is_kept_outside_torchrun(monkeypatch, keep_threads):
    monkeypatch.setattr(machine, "usable_cores", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)  # what torch took from OMP_NUM_THREADS=1 at start
    assert configure_threads() == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun sets OMP_NUM_THREADS=1 itself
    assert configure_threads() == 4


def test_usable_cores_follow_the_affinity():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from pathodet.core.machine import configure_threads; print(configure_threads())")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "PYTHONPATH": str(REPO)}, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1"


def test_idle_openmp_threads_sleep_unless_the_user_chose():
    code = "import os, pathodet; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "PYTHONPATH": str(REPO)}, timeout=60)  # fmt: skip
    assert res.stdout.strip() == "PASSIVE", res.stderr
    res = _child(code, {"OMP_WAIT_POLICY": "ACTIVE"})
    assert res.stdout.strip() == "ACTIVE", res.stderr


def test_the_threads_option_reaches_torch():
    code = ("import sys, torch; from typer.testing import CliRunner; from pathodet.cli import "
            "app; r = CliRunner().invoke(app, ['--threads', '1', 'data', 'summary', "
            "'/nonexistent']); print(torch.get_num_threads())")  # fmt: skip
    res = _child(code, {"OMP_NUM_THREADS": "2"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "1"


# -- the demo's calibration ----------------------------------------------------------------


@pytest.mark.parametrize("steps", [20.5, 99.9, 100, 101, 917, 999.99, 1000, 1234.5, 50_000])
def test_ladder_rounds_down_to_a_rung(steps):
    got = ladder_steps(steps)
    rungs = sorted({round(100 * LADDER_RATIO**k) for k in range(-20, 80)})
    assert got in rungs or got == 20
    assert got <= steps
    above = [r for r in rungs if r > got]
    assert above[0] > steps or got == 20  # the next rung would not fit


def test_ladder_floor_and_rung_spacing():
    assert ladder_steps(3) == 20 and ladder_steps(20) == 20
    # a few percent of noise in the measured time moves the count by at most one rung
    assert ladder_steps(1000 * 1.03) in (
        ladder_steps(1000),
        round(ladder_steps(1000) * LADDER_RATIO),
    )
    assert math.isclose(LADDER_RATIO**8, 2.0)


def test_calibration_is_measured_once_per_folder_machine_and_recipe(tmp_path, monkeypatch):
    calls = []

    def measure():
        calls.append(1)
        return {"step_seconds": 0.5 * len(calls), "window_seconds": 1.0}

    a = calibrated_speed(tmp_path, {"recipe": "demo", "precision": "fp32"}, measure)
    b = calibrated_speed(tmp_path, {"recipe": "demo", "precision": "fp32"}, measure)
    assert (a["reused"], b["reused"]) == (False, True)
    assert a["step_seconds"] == b["step_seconds"] == 0.5 and len(calls) == 1
    c = calibrated_speed(tmp_path, {"recipe": "demo", "precision": "bf16"}, measure)
    assert not c["reused"] and c["step_seconds"] == 1.0 and len(calls) == 2
    # another machine (CPU, capability or threads) measures again
    other = {**machine.machine_record(), "cpu_model": "another CPU"}
    import pathodet.demo.calibrate as calibrate

    monkeypatch.setattr(calibrate, "machine_record", lambda: other)
    d = calibrated_speed(tmp_path, {"recipe": "demo", "precision": "fp32"}, measure)
    assert not d["reused"] and len(calls) == 3
    (tmp_path / "calibration.json").write_text("{not json")
    assert not calibrated_speed(tmp_path, {"recipe": "demo"}, measure)["reused"]


def test_explicit_bf16_runs_the_network_in_bf16_on_a_tiny_input(fresh_announcements):
    """The bf16 path itself, on an input small enough to be quick where bf16 is emulated."""
    from pathodet.core.machine import autocast
    from pathodet.losses.config import LossConfig
    from pathodet.losses.criterion import Criterion, Targets
    from pathodet.model import ModelConfig, build_retinanet
    from pathodet.training.train import train_step

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no ImageNet weights; bf16 emulated (maybe)
        model = build_retinanet(ModelConfig(fpn_channels=16, norm="bn"))
        images = torch.rand(2, 3, 64, 64)
        with torch.no_grad(), autocast("bf16", images.device):
            out = model(images)
        assert out.cls_logits.dtype == torch.bfloat16
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        boxes = [torch.tensor([[10.0, 10.0, 40.0, 40.0]]), torch.zeros(0, 4)]
        losses = train_step(model, opt, Criterion(LossConfig(name="dghm")), images,
                            Targets(boxes, torch.tensor([True, False])), "bf16")  # fmt: skip
    assert math.isfinite(float(losses["loss"]))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32


def test_computing_pathodet_processes_share_the_cores(monkeypatch, tmp_path, keep_threads):
    """Registered processes that computed lately split the cores; idle or dead ones don't
    count. Other processes are simulated by files named by live pids (two sleeping child
    processes: this test's parent may be init, pid 1, when pytest runs detached) and a
    dead one."""
    monkeypatch.setattr(machine.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(machine, "usable_cores", lambda: 4)
    monkeypatch.setattr(machine, "_SHARING", True)
    monkeypatch.setattr(machine, "_LAST_CHECK", -1e9)
    monkeypatch.setattr(machine, "SHARE_CHECK_SECONDS", 0.0)
    folder = tmp_path / f"pathodet-cores-{os.getuid()}"
    sleepers = [subprocess.Popen(["sleep", "120"]) for _ in range(2)]
    try:
        second, third = (str(s.pid) for s in sleepers)
        assert machine.share_cores() == 4  # alone: every core
        folder.joinpath(second).touch()  # a second computing process
        assert machine.share_cores() == 2 and torch.get_num_threads() == 2
        folder.joinpath(third).touch()  # a third
        assert machine.share_cores() == 1
        old = time.time() - 60
        os.utime(folder / third, (old, old))  # it went idle
        assert machine.share_cores() == 2
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
        folder.joinpath(dead).touch()
        assert machine.share_cores() == 2 and not (folder / dead).exists()  # removed
    finally:
        for s in sleepers:
            s.kill()
            s.wait()
    monkeypatch.setattr(machine, "_SHARING", False)  # explicit threads: never touched
    torch.set_num_threads(3)
    assert machine.share_cores() == 3
