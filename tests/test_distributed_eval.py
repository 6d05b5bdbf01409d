"""Evaluation under ``torchrun``: the shard rule, the merge of the ranks' journals, and real two-process gloo runs
on the CPU that give the single-process summary, survive a rank killed mid-run, and resume with another number
of processes.

The kill is deterministic without any hook in the library: the test polls rank 1's journal and SIGKILLs rank 1's
process (found among torchrun's children by its ``RANK``) as soon as the journal holds its first whole record, so
rank 1 dies with its shard started and not finished, whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tests._journals import journal_lines, without

from odam._distributed import environment, shard, sync_point
from odam.cli import main
from odam.data.synthcrowd import generate
from odam.evaluation.explanations import METHODS
from odam.evaluation.journal import (
    Journal,
    ObjectJournal,
    append_rows,
    check_settings,
    image_key,
    image_rows,
    journal_paths,
    object_records,
    rank_path,
)

_ENV = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")} | {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
NMS = ["evaluate", "nms", "--model", "synthcrowd-fcos", "--methods", "nms,odam-nms", "--max-candidates", "40",
       "--device", "cpu"]
EXPLANATIONS = ["evaluate", "explanations", "--model", "synthcrowd-fcos", "--methods", "odam,gradcam", "--steps",
                "4", "--eval-every", "2", "--sanity-objects", "1", "--device", "cpu"]
IMAGES = 6


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The single-process reference runs on one thread, as the torchrun ranks do (``_ENV``): a thread count can
    change a convolution's last bits, and with them the order of near-tied scores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 SynthCrowd scenes of 128x128 (seed 3)."""
    root = tmp_path_factory.mktemp("distributed") / "data"
    generate(root, IMAGES, seed=3, size=128, progress=False)
    return root


# ------------------------------------------------------------------------------------------ the pieces


def test_shard_takes_every_world_th_item_from_the_rank_on() -> None:
    items = list(range(7))
    assert [shard(items, rank, 3) for rank in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert shard(items, 0, 1) == items
    assert shard([], 1, 2) == []
    with pytest.raises(ValueError, match="expected 0 <= rank < world, got rank 2 of 2"):
        shard(items, 2, 2)


def test_outside_torchrun_a_command_is_rank_0_of_1_and_a_sync_point_changes_nothing(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert environment() == (0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert environment() == (3, 4, 1)
    with pytest.raises(KeyError, match="x"), sync_point(1):  # the block's own exception, unchanged
        raise KeyError("x")


def test_rank_journals_are_named_after_rank_0s_and_listed_by_rank(tmp_path: Path) -> None:
    base = tmp_path / "images.jsonl"
    assert rank_path(base, 0) == base and rank_path(base, 12) == tmp_path / "images.rank12.jsonl"
    assert journal_paths(base) == [base]  # rank 0's file is listed even before it exists
    for name in ("images.rank10.jsonl", "images.rank2.jsonl", "images.rank0.jsonl", "images.rank1.jsonl.tmp",
                 "images.rankx.jsonl", "objects.rank1.jsonl", "images.rank01.jsonl"):
        (tmp_path / name).write_text("")
    assert [p.name for p in journal_paths(base)] == ["images.jsonl", "images.rank2.jsonl", "images.rank10.jsonl"]
    with pytest.raises(ValueError, match="expected a rank >= 0"):
        rank_path(base, -1)


def test_merging_keeps_the_first_record_of_each_image_rank_0_first_and_changes_no_file(tmp_path: Path) -> None:
    base = tmp_path / "images.jsonl"
    append_rows(base, [{"image_id": 5, "v": "a"}])
    append_rows(rank_path(base, 2), [{"image_id": 1, "v": "b"}, {"image_id": 5, "v": "c"}])
    append_rows(rank_path(base, 1), [{"image_id": 1, "v": "d"}, {"image_id": 3, "v": "e"}])
    with open(rank_path(base, 1), "a") as f:
        f.write('{"image_id": 7, "v": "f"}')  # being written (or cut short by a kill): not a record yet
    before = {p: p.read_bytes() for p in journal_paths(base)}
    rows = image_rows(base)
    # rank 0: 5=a; rank 1: 1=d, 3=e (7 unfinished); rank 2: 1 and 5 repeated, the earlier ranks' records win
    assert {k: r["v"] for k, r in rows.items()} == {5: "a", 1: "d", 3: "e"}
    assert list(rows) == [5, 1, 3]
    assert {p: p.read_bytes() for p in journal_paths(base)} == before


def test_a_rank_cuts_only_its_own_unfinished_line_and_sees_every_ranks_records(tmp_path: Path) -> None:
    base = tmp_path / "images.jsonl"
    append_rows(base, [{"image_id": 1}])
    append_rows(rank_path(base, 1), [{"image_id": 2}])
    for rank in (0, 1):
        with open(rank_path(base, rank), "a") as f:
            f.write('{"image_id": 9')
    journal = Journal(base, image_key, rank=1)
    assert journal.keys == {1, 2}
    assert rank_path(base, 1).read_text() == '{"image_id": 2}\n'  # its own line cut short is cut
    assert base.read_text() == '{"image_id": 1}\n{"image_id": 9'  # rank 0's file is rank 0's to repair
    journal.extend([{"image_id": 4}])
    assert [json.loads(line)["image_id"] for line in rank_path(base, 1).read_text().splitlines()] == [2, 4]
    assert 4 in Journal(base, image_key, rank=0) and base.read_text() == '{"image_id": 1}\n'
    (tmp_path / "images.rank3.jsonl").write_text("[]\n")
    with pytest.raises(ValueError, match=r"images.rank3.jsonl:1: not a record of this run"):
        Journal(base, image_key, rank=1)


def test_object_records_merge_every_rank_in_object_then_method_order(tmp_path: Path) -> None:
    base = tmp_path / "objects.jsonl"
    row = {"image_id": 1, "ann_id": 1, "method": "odam"}
    append_rows(base, [row | {"order": 2, "v": 0}])
    append_rows(rank_path(base, 1), [row | {"order": 0, "ann_id": 7, "image_id": 2, "v": 1},
                                     row | {"order": 2, "v": 2},  # measured twice: rank 0's counts
                                     row | {"order": 0, "ann_id": 7, "image_id": 2, "method": "gradcam", "v": 3}])
    assert [r["v"] for r in object_records(base, METHODS)] == [3, 1, 0]
    assert (2, 7, "gradcam") in ObjectJournal(base) and (1, 1, "odam") in ObjectJournal(base, rank=3)


def test_a_record_in_any_rank_journal_protects_the_claim(tmp_path: Path) -> None:
    base = tmp_path / "images.jsonl"
    check_settings(tmp_path, {"a": 1}, {}, [base])
    append_rows(rank_path(base, 1), [{"image_id": 1}])
    with pytest.raises(ValueError, match="holds a run with a=1, not 2"):
        check_settings(tmp_path, {"a": 2}, {}, [base])


# ------------------------------------------------------------------------------------ torchrun, 2 ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], log: Path) -> subprocess.Popen:
    """``torchrun --nproc-per-node 2 -m odam ARGS`` in the background, its stdout in ``log``, stderr beside it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(_free_port()), "-m", "odam", *args]
    with open(log, "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen(command, stdout=out, stderr=err, env=_ENV)


def _finish(proc: subprocess.Popen, log: Path) -> str:
    assert proc.wait(timeout=300) == 0, log.with_suffix(".err").read_text()[-3000:]
    return log.read_text()




def _rank_pid(parent: int, rank: int) -> int | None:
    """The process with ``RANK=rank`` among ``parent``'s children (torchrun's workers), if it has started."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and f"RANK={rank}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's workers in /proc")
def test_nms_on_two_ranks_survives_a_rank_killed_mid_run_and_gives_the_single_process_summary(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, one_thread: None) -> None:
    assert main([*NMS, "--data", str(data), "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    one, two = tmp_path / "one" / "synthcrowd-fcos", tmp_path / "two" / "synthcrowd-fcos"
    args = [*NMS, "--data", str(data), "--out", str(tmp_path / "two")]

    killed = _torchrun(args, tmp_path / "killed.log")
    journal1, deadline = two / "images.rank1.jsonl", time.monotonic() + 240
    while not (journal1.exists() and b"\n" in journal1.read_bytes()):
        assert killed.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.err").read_text()[-3000:]
        time.sleep(0.005)
    pid = _rank_pid(killed.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert killed.wait(timeout=120) != 0  # torchrun stops rank 0 too and fails
    done = len(journal_lines(journal1))
    assert 1 <= done < IMAGES // 2  # rank 1 died with its shard (images 1, 3, 5) begun and not finished
    assert not (two / "summary.json").exists()

    printed = _finish(_torchrun(args, tmp_path / "rerun.log"), tmp_path / "rerun.log")
    assert printed.count("| model | method | AP ↑") == 1  # rank 0 alone reports
    ranks = {rank: journal_lines(rank_path(two / "images.jsonl", rank)) for rank in (0, 1)}
    # every image exactly once, each on the rank the fixed shard gives it
    assert sorted(r["image_id"] for rows in ranks.values() for r in rows) == sorted(image_rows(one / "images.jsonl"))
    order = list(image_rows(one / "images.jsonl"))
    assert [[order.index(r["image_id"]) % 2 for r in rows] for rows in ranks.values()] == [[0] * 3, [1] * 3]
    # the first image of each process is its untimed warm-up: rank 1 ran in two processes
    assert [r["timed"] for r in ranks[1]] == [False, *[True] * (done - 1), False, *[True] * (2 - done)]
    timing = ("seconds", "timed")
    assert without(json.loads((two / "summary.json").read_text()), timing) == \
        without(json.loads((one / "summary.json").read_text()), timing)
    assert json.loads((two / "config.json").read_text()) == json.loads((one / "config.json").read_text())


def test_explanations_on_two_ranks_give_the_single_process_summary_and_resume_on_one(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, one_thread: None) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*EXPLANATIONS, "--data", str(data), "--max-objects", "4", "--out", str(one)]) == 0
    capsys.readouterr()
    printed = _finish(_torchrun([*EXPLANATIONS, "--data", str(data), "--max-objects", "4", "--out", str(two)],
                                tmp_path / "two.log"), tmp_path / "two.log")
    assert printed.count("| ODAM |") == (one / "summary.md").read_text().count("| ODAM |") > 0  # rank 0 alone
    assert journal_lines(two / "objects.rank1.jsonl")  # both ranks measured
    timing = ("seconds_per_object",)
    for name in ("summary.json", "summary.csv"):
        ours, theirs = ((run / name).read_text() for run in (two, one))
        if name.endswith(".json"):
            ours, theirs = (without(json.loads(text), timing) for text in (ours, theirs))
        else:
            ours, theirs = ([line.rsplit(",", 1)[0] for line in text.splitlines()] for text in (ours, theirs))
        assert ours == theirs, name
    # One process resumes the two ranks' run with more objects: it measures only the new ones, into objects.jsonl.
    before = {p.name: p.read_text() for p in two.glob("*.rank1.jsonl")}
    for run in (one, two):
        assert main([*EXPLANATIONS, "--data", str(data), "--max-objects", "6", "--out", str(run)]) == 0
    assert {p.name: p.read_text() for p in two.glob("*.rank1.jsonl")} == before
    for name in ("objects.jsonl", "sanity.jsonl"):
        rows = [r for path in journal_paths(two / name) for r in journal_lines(path)]
        keys = [(r["image_id"], r["ann_id"], r["method"]) for r in rows]
        assert len(keys) == len(set(keys))  # nothing measured twice
        assert without(object_records(two / name, METHODS), ("seconds",)) == \
            without(object_records(one / name, METHODS), ("seconds",))
    assert without(json.loads((two / "summary.json").read_text()), timing) == \
        without(json.loads((one / "summary.json").read_text()), timing)

