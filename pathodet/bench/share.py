"""``pathodet bench share``: two pathodet processes started together on one machine.

Each process runs the same fixed work, a number of training steps of the demo recipe
(batch 8, 256-px crops, 128-channel FPN) on a random batch in the native precision, first
alone, then two at once. The figure is the slowdown: the slower of the pair's times over
the time alone (1.0 = no interference, 2.0 = the cores fairly shared, since each process
then gets half of them).

Rows, each a pair of child processes:

- ``pathodet``: what pathodet does by default: idle OpenMP threads sleep
  (``OMP_WAIT_POLICY=PASSIVE``, set in ``pathodet/__init__.py``) and torch threads = the
  usable cores;
- ``pathodet, half the threads each``: the same with ``--threads`` set to half the cores,
  as a user sharing the machine on purpose would;
- ``torch default (spinning)``: torch imported before pathodet, so its OpenMP runtime
  starts with its own waiting policy (idle threads spin for a while before sleeping): how
  every pathodet process ran before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pathodet.core.io import atomic_write_text
from pathodet.core.machine import machine_line, machine_record, usable_cores

_CHILD = "pathodet.bench.share"
_TORCH_FIRST = (
    "import torch, runpy, sys; sys.argv = ['share', *sys.argv[1:]]; "
    f"runpy.run_module('{_CHILD}', run_name='__main__')"
)


def child_work(steps: int, threads: int | None, torch_first: bool = False) -> dict:
    """In a child process: ``steps`` demo-recipe training steps; their wall seconds."""
    import torch

    from pathodet.core.machine import configure_threads, resolve_precision, share_cores
    from pathodet.demo.calibrate import random_batch
    from pathodet.demo.settings import demo_config
    from pathodet.losses.criterion import Criterion, Targets
    from pathodet.model import build_retinanet
    from pathodet.training.train import train_step

    # the spinning row is pathodet before this change: every core, no sharing
    n = configure_threads(usable_cores() if torch_first else threads)
    precision = resolve_precision("auto", "cpu", log=lambda _: None)
    cfg = demo_config(".", "dghm", 0, 1, [])
    torch.manual_seed(0)
    model = build_retinanet(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    images, boxes, ap = random_batch(8, cfg.train.augment.crop, torch.Generator().manual_seed(0))
    criterion, targets = Criterion(cfg.loss, cfg.model.assign), Targets(boxes, ap)
    train_step(model, opt, criterion, images, targets, precision)  # warm-up
    print("ready", flush=True)  # the parent starts every child's timed work at once
    sys.stdin.readline()
    t0 = time.perf_counter()
    for _ in range(steps):
        share_cores()  # as the trainer does at every step
        train_step(model, opt, criterion, images, targets, precision)
    return {
        "seconds": time.perf_counter() - t0,
        "threads": n,
        "precision": precision,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }


def _start(steps: int, threads: int | None, torch_first: bool) -> subprocess.Popen:
    args = [str(steps), str(threads or 0), str(int(torch_first))]
    env = dict(os.environ)
    if torch_first:
        env.pop("OMP_WAIT_POLICY", None)
        cmd = [sys.executable, "-c", _TORCH_FIRST, "--child", *args]
    else:
        cmd = [sys.executable, "-m", _CHILD, "--child", *args]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def _together(procs: list[subprocess.Popen]) -> list[dict]:
    """Wait until every child has warmed up, release them at once, collect their results."""
    for p in procs:
        line = p.stdout.readline() if p.stdout else ""
        if line.strip() != "ready":
            _, err = p.communicate()
            raise RuntimeError(f"bench share child failed (exit {p.returncode}): {err[-2000:]}")
    for p in procs:
        p.stdin.write("go\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"bench share child failed (exit {p.returncode}): {err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def pair(steps: int, threads: int | None, torch_first: bool) -> dict:
    """One row: the work alone, then two copies whose timed work starts together (each
    warms up first and waits for the other)."""
    (alone,) = _together([_start(steps, threads, torch_first)])
    both = _together([_start(steps, threads, torch_first) for _ in range(2)])
    slowest = max(b["seconds"] for b in both)
    return {
        "alone_s": alone["seconds"],
        "together_s": [b["seconds"] for b in both],
        "slowdown": slowest / alone["seconds"],
        "threads": alone["threads"],
        "precision": alone["precision"],
        # with torch first, pathodet's setting comes after the OpenMP runtime read it
        "omp_wait_policy": "unset (the runtime's default)"
        if torch_first
        else alone["omp_wait_policy"],
    }


ROWS = (
    ("pathodet", None, False),
    ("pathodet, half the threads each", "half", False),
    ("torch default (spinning)", None, True),
)


def run_share(out: Path, steps: int = 20, log=print) -> dict:
    """Every row of :data:`ROWS`; writes ``out/share.json`` and ``out/share.md``."""
    machine = machine_record()
    log(f"machine: {machine_line(machine)}")
    rows = []
    for label, threads, torch_first in ROWS:
        n = max(1, usable_cores() // 2) if threads == "half" else None
        row = {"label": label, **pair(steps, n, torch_first)}
        log(f"{label}: alone {row['alone_s']:.1f} s, together "
            f"{', '.join(f'{t:.1f}' for t in row['together_s'])} s: "
            f"slowdown {row['slowdown']:.2f}x")  # fmt: skip
        rows.append(row)
    from pathodet.bench.speed import git_commit

    result = {"machine": machine, "steps": steps, "rows": rows, "commit": git_commit(),
              "command": f"pathodet bench share --steps {steps}"}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "share.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "share.md", share_md(result))
    speed = out / "speed.md"
    if speed.is_file():
        atomic_write_text(speed, with_section(speed.read_text(), share_md(result)))
    return result


def with_section(text: str, section: str) -> str:
    """``text`` (markdown) with its ``## `` section of the same title as ``section``
    replaced by it, or ``section`` appended when there is none."""
    title = section.splitlines()[0]
    lines = text.rstrip("\n").split("\n")
    if title in lines:
        start = lines.index(title)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))  # fmt: skip
        lines = lines[:start] + lines[end:]
    body = "\n".join(lines).rstrip("\n")
    return body + "\n\n" + section.rstrip("\n") + "\n"


def share_md(r: dict) -> str:
    """The markdown table of :func:`run_share`'s result."""
    lines = [
        "## Two processes on one machine",
        "",
        f"`{r['command']}` at commit {r['commit']}, on {machine_line(r['machine'])}. Each "
        f"process runs {r['steps']} training steps of the demo recipe (batch 8, 256-px crops, "
        "128-channel FPN, random batch) in the native precision, alone and then two started "
        "together. Slowdown: the slower of the two over the time alone (2.0 = the cores "
        "shared fairly; target at most 2.5). Threads each: at the start; a pathodet process "
        "left to choose its threads takes every core while alone and half of them once it "
        "sees another computing pathodet process (`share_cores`, checked each step).",
        "",
        "| setting | torch threads each | OpenMP wait policy | alone (s) | together (s) | "
        "slowdown |",
        "|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['label']} | {x['threads']} | {x['omp_wait_policy']} | {x['alone_s']:.1f} | "
            f"{' / '.join(f'{t:.1f}' for t in x['together_s'])} | {x['slowdown']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # a child process of pair()
    if sys.argv[1:2] == ["--child"]:
        steps, threads, torch_first = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
        print(json.dumps(child_work(steps, threads or None, torch_first)))
