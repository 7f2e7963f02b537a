import csv
import json
import shlex
from pathlib import Path

import pytest

from tim4rec.bench import curves, kernel, quality, quality_plan, quality_report, speed
from tim4rec.cli import build_parser
from tim4rec.config import load_config
from tim4rec.errors import ConfigError, Tim4RecError


def test_quality_plan_runs_resumes_and_reports(synthetic_inter: Path, tmp_path: Path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"dataset: {synthetic_inter}\nseeds: [1, 2]\ncompare_to: floor\n"
        "common: {epochs: 2, threads: 1, MAX_ITEM_LIST_LENGTH: 8, lr_decay_patience: 2}\n"
        "runs:\n  small: {model: sasrec, hidden_size: 8, n_heads: 2, inner_size: 16}\n"
        "  floor: {model: mostpop, lr_decay_patience: null}\n"  # a run switching a common setting off
    )
    output = tmp_path / "out"
    quality.run_plan(plan, output, deadline=0)  # a deadline of 0 starts nothing
    assert not (output / "runs").exists()
    quality.run_plan(plan, output)
    first = json.loads((output / "runs/small/seed1/results.json").read_text())
    assert first["status"] == "finished" and first["epochs_run"] == 2
    text = quality_report.report(plan, output)
    assert "| small | sasrec |" in text and "1, 2" in text
    assert "Paired comparison with `floor`" in text and "| small | 30 |" in text  # 30 users, both seeds paired
    assert (output / "quality.csv").exists() and (output / "quality_valid_ndcg.png").stat().st_size > 0
    assert "How the table reads" in text and (output / "reading.md").read_text() in text  # quoted whole
    # raising the plan's epochs resumes the finished runs instead of starting over
    plan.write_text(plan.read_text().replace("epochs: 2", "epochs: 3"))
    quality.run_plan(plan, output)
    again = json.loads((output / "runs/small/seed1/results.json").read_text())
    assert again["epochs_run"] == 3
    assert again["epochs"][:2] == first["epochs"][:2]

    # every row's `tim4rec train` command gives the config the run trained with
    text = quality_report.report(plan, output)
    commands = [line for line in text.splitlines() if line.startswith("tim4rec train ")]
    assert len(commands) == 4  # two runs x two seeds
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])
        from_command, _ = load_config(model=args.model, dataset=args.dataset, set_args=args.set)
        recorded = json.loads((output / args.output / "results.json").read_text())["config"]
        assert from_command.to_dict() == {**recorded, "show_progress": from_command.show_progress}

    # seen items removed: computed by the trainer; --add-seen-removed restores them from best.pt
    assert "seen removed" in text and "| small | 1, 2 |" in text
    assert "Paired comparison with `floor` on per-user test NDCG@10, seen items removed" in text
    path = output / "runs/small/seed1/results.json"
    trained = json.loads(path.read_text())
    del trained["test_seen_removed"], trained["test_seen_removed_ranks"]
    path.write_text(json.dumps(trained))
    assert len(quality.add_seen_removed(plan, output)) == 1
    restored = json.loads(path.read_text())
    assert restored["test_seen_removed"] == again["test_seen_removed"]
    assert restored["test_seen_removed_ranks"] == again["test_seen_removed_ranks"]
    assert quality.add_seen_removed(plan, output) == []  # nothing left to add
    del restored["test_seen_removed"], restored["test_seen_removed_ranks"]
    restored["test"]["ndcg@10"] += 0.01  # results.json no longer matches best.pt
    path.write_text(json.dumps(restored))
    with pytest.raises(Tim4RecError, match="not the run's best weights"):
        quality.add_seen_removed(plan, output)

    # compare_to as {run: reference}: each named run against its own reference, the reference named in the row
    plan.write_text(plan.read_text().replace("compare_to: floor", "compare_to: {small: floor}"))
    text = quality_report.report(plan, output)
    assert "Paired comparisons, each run with its reference," in text and "| small | floor | 30 |" in text
    assert not (output / "reading.md").exists()  # no reading around one run now: the earlier one is gone


def test_status_lists_where_every_run_stands(synthetic_inter: Path, tmp_path: Path, capsys):
    import fcntl

    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"dataset: {synthetic_inter}\nseeds: [1, 2]\ncommon: {{epochs: 1, threads: 1, MAX_ITEM_LIST_LENGTH: 8}}\n"
        "runs:\n  small: {model: sasrec, hidden_size: 8, n_heads: 2, inner_size: 16}\n"
    )
    output = tmp_path / "out"
    assert [row["state"] for row in quality.plan_status(plan, output)] == ["todo", "todo"]
    quality.run_plan(plan, output, seeds=[1])
    done, todo = quality.plan_status(plan, output)
    assert done["state"] == "done" and done["epochs"] == "1" and done["stopped_by"] == "epochs"
    assert done["best_epoch"] == 1 and 0 <= done["best_valid"] <= 1 and todo["state"] == "todo"
    with open(output / "runs/small/seed1/.lock") as handle:  # a process training there now
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert quality.plan_status(plan, output)[0]["state"] == "training"
    assert not (output / "runs/small/seed2").exists()  # reading the status writes nothing
    from tim4rec.cli import main

    assert main(["bench", "quality", str(plan), "--output", str(output), "--status"]) == 0
    printed = capsys.readouterr().out
    assert "| small | 1 | done | 1 | 1 |" in printed and printed.endswith("1 done, 1 todo\n")


def test_anchors_are_shown_and_checked(tmp_path: Path):
    anchor = "{model: SASRec, source: a paper, hit@10: 0.3152, ndcg@10: 0.1821, seen_items: removed}"
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"dataset: ml-100k\nruns: {{a: {{model: sasrec}}}}\nanchors: [{anchor}]\n")
    loaded = quality_plan.read_plan(plan)
    assert "| SASRec | a paper | 0.3152 | 0.1821 | removed |" in quality_report.anchors_table(loaded["anchors"])
    for bad, message in [
        (anchor.replace("0.1821", "18.21"), "ndcg@10: expected a number in"),
        (anchor.replace("removed", "hidden"), "seen_items: expected one of"),
        (anchor.replace(", source: a paper", ""), r"anchors\[1\]: expected the keys"),
    ]:
        plan.write_text(f"dataset: ml-100k\nruns: {{a: {{model: sasrec}}}}\nanchors: [{bad}]\n")
        with pytest.raises(ConfigError, match=message):
            quality_plan.read_plan(plan)


def test_models_left_out_say_why(tmp_path: Path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("dataset: ml-100k\nruns: {a: {model: sasrec}}\nnot_run: {caser: too slow here}\n")
    not_run = quality_plan.read_plan(plan)["not_run"]
    assert quality_report.not_run_list(not_run) == "Not run:\n\n- **caser**: too slow here\n"
    plan.write_text("dataset: ml-100k\nruns: {a: {model: sasrec}}\nnot_run: {caser: ''}\n")
    with pytest.raises(ConfigError, match="not_run: expected a mapping of model to the reason"):
        quality_plan.read_plan(plan)


def test_bad_plan(tmp_path: Path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("dataset: ml-100k\nrunz: {}\n")
    with pytest.raises(ConfigError, match="unknown plan keys"):
        quality_plan.read_plan(plan)


@pytest.mark.parametrize("model", ["sasrec", "tim4rec", "bert4rec"])
def test_speed_point_measures_time_mfu_and_memory(model):
    small = {"sasrec": {"hidden_size": 8, "n_heads": 2, "inner_size": 16},
             "tim4rec": {"hidden_size": 8, "head_dim": 4, "d_state": 4, "chunk_size": 8},
             "bert4rec": {"hidden_size": 8, "n_heads": 2, "inner_size": 16}}[model]  # fmt: skip
    row = speed.measure_point(
        model, 16, batch=2, infer_batch=3, items=50, dropout=False, device="cpu", threads=1, warmup=1, repeats=2,
        hyperparameters=small,
    )  # fmt: skip
    measured = ("causal", "readout", "infer") if model != "bert4rec" else ("readout", "infer")
    for what in measured:
        assert row[f"{what}_s"] > 0 and row[f"{what}_gflop"] > 0 and 0 < row[f"{what}_mfu"] < 10
    assert "causal_s" not in row or model != "bert4rec"
    assert row["peak_mib"] >= 0 and row["mode"] == "eager"


def test_speed_runs_each_precision_side_by_side(tmp_path: Path):
    """``--precision off bf16``: a row per precision, each with both FLOP counts, MFU over its own matmul rate
    and its speed-up over the float32 row."""
    small = {"tim4rec": {"hidden_size": 8, "head_dim": 4, "d_state": 4, "chunk_size": 8}}
    text = speed.run(["tim4rec"], [16], batch=2, items=50, dropouts=[False], device="cpu", threads=1, warmup=1,
                     repeats=2, output=tmp_path, memory_limit_gib=None, hyperparameters=small, infer_batch=3,
                     precisions=("off", "bf16"))  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "speed.csv").open()))
    assert [r["precision"] for r in rows] == ["off", "bf16"] and "speed-up over float32" in text
    off, bf16 = rows
    assert float(off["causal_vs_float32"]) == 1.0 and float(bf16["causal_vs_float32"]) > 0
    assert float(bf16["matmul_gflops"]) != float(off["matmul_gflops"])  # each precision's own rate
    for row in rows:
        assert float(row["causal_counted_gflop"]) > 0 and float(row["infer_counted_mfu"]) > 0


def test_flops_see_the_fused_cpu_attention():
    """FlopCounterMode does not count PyTorch's CPU attention kernel; bench.flops registers its formula."""
    from tim4rec.bench.flops import step_flops

    base = {"hidden_size": 8, "n_heads": 2, "inner_size": 16, "n_layers": 1, "hidden_dropout_prob": 0.0,
            "attn_dropout_prob": 0.0}  # fmt: skip
    short, long = (step_flops("sasrec", base, 50, length, 2, "causal") for length in (16, 32))
    b, h, head = 2, 2, 4
    forward_attention = 4 * b * h * head * (32 * 32 - 2 * 16 * 16)  # what doubling L adds beyond twice
    assert long - 2 * short >= forward_attention  # the quadratic part is counted (the rest doubles with L)


def test_kernel_forms_agree_and_table(tmp_path: Path):
    import torch

    generator = torch.Generator().manual_seed(0)
    b, l, h, p, n = 2, 37, 2, 4, 3
    x = torch.randn(b, l, h, p, generator=generator, dtype=torch.float64)
    dt = torch.rand(b, l, h, generator=generator, dtype=torch.float64) * 0.5
    A = -torch.rand(h, generator=generator, dtype=torch.float64) * 3
    B = torch.randn(b, l, 1, n, generator=generator, dtype=torch.float64)
    C = torch.randn(b, l, 1, n, generator=generator, dtype=torch.float64)
    chunked = kernel.ssd_scan(x, dt, A, B, C, 8)
    torch.testing.assert_close(kernel.ssd_quadratic(x, dt, A, B, C), chunked)
    torch.testing.assert_close(kernel.recurrent_forward(x, dt, A, B, C), chunked)
    text = kernel.run(
        [32, 64],
        batch=2,
        heads=2,
        head_dim=4,
        state=4,
        chunk=16,
        threads=1,
        device="cpu",
        warmup=1,
        repeats=1,
        max_recurrent=64,
        max_quadratic=64,
        output=tmp_path,
    )
    assert "ssd_chunked" in text and "ssd_quadratic" in text and (tmp_path / "kernel.png").exists()
    assert kernel.chunked_forward_flops(1, 64, 1, 1, 1, 64) == 2.0 * (64 * 64 + 64 * 64 + 64 + 1 + 64)


def test_a_deadline_cuts_each_runs_budget_to_end_in_time(synthetic_inter: Path, tmp_path: Path, monkeypatch):
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"dataset: {synthetic_inter}\ncommon: {{time_budget: 1000, threads: 1}}\n"
        "runs:\n  fresh: {model: sasrec}\n  cut: {model: sasrec}\n  roomy: {model: sasrec}\n"
    )
    output = tmp_path / "out"
    # 'cut' ran 50 s in an earlier invocation, stopped by a budget the plan has since raised
    (output / "runs/cut/seed2020").mkdir(parents=True)
    earlier = {"status": "finished", "stopped_by": "time_budget", "elapsed_seconds": 50.0, "epochs_run": 1}
    (output / "runs/cut/seed2020/results.json").write_text(json.dumps(earlier))
    (output / "runs/cut/seed2020/checkpoint.pt").touch()  # what --resume continues from (api.run is faked here)
    monkeypatch.setattr(quality, "DEADLINE_MARGIN", 10.0)
    monkeypatch.setattr(quality, "SHORTEST_RUN", 5.0)
    started: list[tuple[str, float, bool]] = []

    def record_start(config, *, output_dir, resume, notices):
        started.append((Path(output_dir).parent.name, config.time_budget, resume))

    monkeypatch.setattr(quality.api, "run", record_start)

    quality.run_plan(plan, output, deadline=12)  # 2 s of training left: too little to start anything
    assert started == []
    quality.run_plan(plan, output, deadline=100, only=["fresh", "cut"])
    (fresh, fresh_budget, fresh_resume), (cut, cut_budget, cut_resume) = started
    assert (fresh, cut, fresh_resume, cut_resume) == ("fresh", "cut", False, True)
    assert 85 <= fresh_budget <= 90  # the deadline, less the margin, less the seconds already gone
    assert 135 <= cut_budget <= 140  # a budget counts the run's earlier 50 s too
    quality.run_plan(plan, output, deadline=10_000, only=["roomy"])
    assert started[-1] == ("roomy", 1000, False)  # the plan's budget fits: left as it is


def test_threads_replace_the_plans_for_one_invocation(synthetic_inter: Path, tmp_path: Path, monkeypatch):
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"dataset: {synthetic_inter}\ncommon: {{threads: 1, time_budget: 1000}}\nruns:\n  one: {{model: sasrec}}\n"
    )
    started: list[tuple[int, float]] = []
    monkeypatch.setattr(quality.api, "run", lambda config, **_: started.append((config.threads, config.time_budget)))
    quality.run_plan(plan, tmp_path / "out")
    quality.run_plan(plan, tmp_path / "out", threads=2, deadline=500)  # the budget is cut: the cut config keeps them
    (plan_threads, plan_budget), (threads, cut_budget) = started
    assert (plan_threads, plan_budget, threads) == (1, 1000, 2) and cut_budget < 1000
    with pytest.raises(ConfigError, match="threads"):
        quality.run_plan(plan, tmp_path / "out", threads=0)
    args = build_parser().parse_args(["bench", "quality", str(plan), "--threads", "2"])
    assert args.threads == 2


def test_an_unfinished_run_without_its_checkpoint_is_skipped_not_lost(synthetic_inter: Path, tmp_path: Path, capsys):
    # a results.json of a run the budget cut (committed), on a machine that lacks the run's checkpoint.pt
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"dataset: {synthetic_inter}\ncommon: {{time_budget: 1000, threads: 1}}\nruns:\n  cut: {{model: mostpop}}\n"
    )
    folder = tmp_path / "out/runs/cut/seed2020"
    folder.mkdir(parents=True)
    earlier = json.dumps({"status": "finished", "stopped_by": "time_budget", "elapsed_seconds": 50.0, "epochs_run": 1})
    (folder / "results.json").write_text(earlier)
    quality.run_plan(plan, tmp_path / "out")
    assert "no checkpoint.pt to continue from; skipped" in capsys.readouterr().err
    assert (folder / "results.json").read_text() == earlier and not (folder / "checkpoint.pt").exists()


def test_the_tables_leave_out_a_run_a_cut_budget_stopped_short(synthetic_inter: Path, tmp_path: Path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"dataset: {synthetic_inter}\nseeds: [1, 2]\ncommon: {{time_budget: 1000}}\n"
        "runs:\n  floor: {model: mostpop}\n"
    )
    output = tmp_path / "out"
    quality.run_plan(plan, output, seeds=[1])
    # seed 2 as a --deadline would leave it: finished, but stopped by a budget cut to 50 s of the plan's 1000
    cut = json.loads((output / "runs/floor/seed1/results.json").read_text())
    cut.update(seed=2, stopped_by="time_budget", elapsed_seconds=50.0)
    (output / "runs/floor/seed2").mkdir()
    (output / "runs/floor/seed2/results.json").write_text(json.dumps(cut))
    assert "| floor | mostpop | prefix | 1 |" in quality_report.report(plan, output)
    cut["elapsed_seconds"] = 990.0  # within 2% of the plan's budget: spent
    (output / "runs/floor/seed2/results.json").write_text(json.dumps(cut))
    assert "| floor | mostpop | prefix | 1, 2 |" in quality_report.report(plan, output)


def test_a_run_held_by_another_process_is_skipped(tmp_path: Path):
    with quality._claim(tmp_path / "run") as first:
        assert first
        with quality._claim(tmp_path / "run") as second:
            assert not second
    with quality._claim(tmp_path / "run") as again:
        assert again


def test_a_status_probe_does_not_keep_a_run_from_starting(tmp_path: Path):
    """A --status probe holds the lock shared for an instant: a run claiming the folder then waits it out."""
    import fcntl
    import threading

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").touch()
    probe = open(tmp_path / "run" / ".lock")
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
    threading.Timer(0.2, probe.close).start()  # closing lets the probe's lock go
    with quality._claim(tmp_path / "run") as claimed:
        assert claimed


def test_time_to_a_validation_level():
    epochs = [
        {"train_seconds": 10.0, "valid_seconds": 2.0, "valid": {"ndcg@10": 0.03}},
        {"train_seconds": 10.0, "valid_seconds": 2.0, "valid": {"ndcg@10": 0.061}},
        {"train_seconds": 10.0, "valid_seconds": 2.0, "valid": {"ndcg@10": 0.05}},
    ]
    assert quality_report.time_to({"epochs": epochs}, "ndcg@10", 0.06) == 24.0
    assert quality_report.time_to({"epochs": epochs}, "ndcg@10", 0.07) is None


def test_epochs_trained_count_each_cut_epoch_by_its_fraction():
    whole = {"partial": False, "fraction": 1.0}
    assert quality_report.epochs_reached({"epochs_run": 3, "epochs": [whole] * 3}) == "3"
    cut_last = {"epochs_run": 3, "epochs": [whole, whole, {"partial": True, "fraction": 0.4}]}
    assert quality_report.epochs_reached(cut_last) == "2.40"
    # a budget cut epoch 2, the run was resumed at epoch 3 (as TiSASRec seed 2021 on ML-1M: 32.07, not 33)
    cut_then_resumed = {"epochs_run": 3, "epochs": [whole, {"partial": True, "fraction": 0.07}, whole]}
    assert quality_report.epochs_reached(cut_then_resumed) == "2.07"
    both = {
        "epochs_run": 4,
        "epochs": [whole, {"partial": True, "fraction": 0.5}, whole, {"partial": True, "fraction": 0.25}],
    }
    assert quality_report.epochs_reached(both) == "2.75"


def test_bad_time_to(tmp_path: Path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("dataset: ml-100k\ntime_to: 0.06\nruns: {a: {model: sasrec}}\n")
    with pytest.raises(ConfigError, match="time_to: expected one metric"):
        quality_plan.read_plan(plan)


def test_curves_put_runs_side_by_side_at_the_chosen_epochs(tmp_path: Path):
    def results(name: str, values: list[float], precision: str) -> Path:
        epochs = [{"epoch": e + 1, "train_seconds": 10.0 * (e + 1), "valid_seconds": 2.0, "partial": False,
                   "valid": {"ndcg@10": v}} for e, v in enumerate(values)]  # fmt: skip
        path = tmp_path / name / "results.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"epochs": epochs, "config": {"model": "tim4rec", "mixed_precision": precision}}))
        return path

    first, second = results("a", [0.1, 0.2, 0.3], "off"), results("b", [0.1, 0.25], "bf16")
    text = curves.run([str(first), str(second)], [2, 3], tmp_path / "out")
    assert "| 2 | 0.2 | 0.25 | 0.05 |" in text and "| 3 | 0.3 |  |  |" in text  # epoch 3: the second run has none
    assert "float32, eager: 20.0 s of training + 2.0 s of validation" in text and "bf16" in text
    assert (tmp_path / "out" / "curves.md").read_text() == text
    timed = curves.run([str(first), str(second)], [1], tmp_path / "timed", seconds=[12, 25, 40])
    assert "| 12 | 0.1000 (epoch 1) | 0.1000 (epoch 1) |" in timed  # 10 + 2 s: epoch 1 of both
    assert "| 25 | 0.1000 (epoch 1) | 0.1000 (epoch 1) |" in timed  # epoch 2 ends at 34 s
    assert "| 40 | 0.2000 (epoch 2) | 0.2500 (epoch 2) |" in timed
    assert (tmp_path / "timed" / "curves.png").stat().st_size > 0
    with pytest.raises(Tim4RecError, match="not a run's results.json"):
        curves.run([str(tmp_path / "missing.json")], [1], tmp_path / "out")


@pytest.mark.parametrize("model", ["tim4rec", "bert4rec"])
def test_speed_times_onnxruntime_beside_eager(model):
    """``--onnx``: an exportable model's inference batch through onnxruntime (checked against eager), timed beside
    the eager time; a model that cannot be exported says why in its row instead."""
    pytest.importorskip("onnxruntime")
    small = {"tim4rec": {"hidden_size": 8, "head_dim": 4, "d_state": 4, "chunk_size": 8},
             "bert4rec": {"hidden_size": 8, "n_heads": 2, "inner_size": 16}}[model]  # fmt: skip
    row = speed.measure_point(
        model, 16, batch=2, infer_batch=3, items=50, dropout=False, device="cpu", threads=1, warmup=1, repeats=2,
        hyperparameters=small, onnx=True,
    )  # fmt: skip
    if model == "tim4rec":
        assert row["infer_onnx_s"] > 0 and row["infer_onnx_max_abs_difference"] <= 1e-4
        assert row["infer_onnx_speedup"] == pytest.approx(row["infer_s"] / row["infer_onnx_s"])
    else:
        assert "infer_onnx_s" not in row and "cannot be exported" in row["onnx"]


def _seed_result(
    run: str, ndcg: float, ranks: list[int], stopped_by: str = "early_stopping", seed: int = 2020, valid: float = 0.0
) -> dict:
    """A finished run's results as plain_reading reads them: both protocols' NDCG@10 and per-user ranks."""
    users = [str(u) for u in range(len(ranks))]
    per_user = {"users": users, "ranks": ranks}
    return {
        "_run": run,
        "seed": seed,
        "valid_metric": "ndcg@10",
        "best_valid": {"ndcg@10": valid},
        "stopped_by": stopped_by,
        "test": {"ndcg@10": ndcg},
        "test_seen_removed": {"ndcg@10": ndcg + 0.05},
        "test_ranks": per_user,
        "test_seen_removed_ranks": per_user,
    }


def test_a_setting_set_aside_on_validation_neither_leads_nor_counts(tmp_path: Path):
    """An arm the plan set aside (alternative_to) is shown but cannot lead, even with the best test figure, and is
    left out of the verdict; the closing paragraph gives its validation beside its row's and flags a choice that
    validation contradicts. A plan's alternative_to must name another run that is not itself an alternative."""
    many = 100
    near = [1 + (u % 2) for u in range(many)]
    results = [
        *(_seed_result("ref", v, near, seed=s, valid=0.2) for s, v in ((2020, 0.30), (2021, 0.31), (2022, 0.32))),
        _seed_result("row", 0.29, near, valid=0.25),
        _seed_result("row-arm", 0.33, near, valid=0.24),  # best on test, set aside on validation
        _seed_result("other-arm", 0.10, [20] * many, valid=0.26),  # validates above its row: flagged
    ]
    text = quality_report.plain_reading(results, "ref", alternatives={"row-arm": "row", "other-arm": "row"})
    assert "**Seen items ranked.** `ref` leads with test NDCG@10 0.3100 ± 0.0100 (3 seeds)" in text
    assert "| `row-arm` (set aside) | 1 | 0.3300 |" in text
    assert "`ref` is not above `row` both beyond the seed spread and by the paired test (p < 0.05)." in text
    assert "`row-arm` for `row` (best validation ndcg@10 0.2400 against 0.2500, seed 2020)" in text
    assert (
        "`other-arm` for `row` (best validation ndcg@10 0.2600 against 0.2500, seed 2020): it validates higher" in text
    )
    assert "`row-arm` leads" in quality_report.plain_reading(results, "ref")  # without the plan's marks
    alone = quality_report.plain_reading(
        results, "ref", alternatives={"row": "ref", "row-arm": "ref", "other-arm": "ref"}
    )
    assert "No other row to compare `ref` with." in alone
    results[-1]["valid_metric"] = "hit@10"
    assert "`other-arm` for `row` (validated on different metrics: not compared)" in quality_report.plain_reading(
        results, "ref", alternatives={"row-arm": "row", "other-arm": "row"}
    )

    plan = tmp_path / "plan.yaml"
    for target in ("row-arm", "probe", "missing"):  # an alternative, itself, no such run
        runs = {"row": {"model": "sasrec"}, "row-arm": {"model": "sasrec", "alternative_to": "row"}}
        runs["probe"] = {"model": "sasrec", "alternative_to": target}
        plan.write_text(json.dumps({"dataset": "ml-100k", "runs": runs}))
        with pytest.raises(ConfigError, match="runs.probe.alternative_to"):
            quality_plan.read_plan(plan)
    del runs["probe"]
    plan.write_text(json.dumps({"dataset": "ml-100k", "runs": runs, "compare_to": "row-arm"}))
    with pytest.raises(ConfigError, match="compare_to"):
        quality_plan.read_plan(plan)
    runs["row-arm"]["learning_rate"] = 0.001
    plan.write_text(json.dumps({"dataset": "ml-100k", "runs": runs}))
    read = quality_plan.read_plan(plan)
    assert quality_plan.alternatives(read) == {"row-arm": "row"}
    config = quality_plan.run_config(read, "row-arm", 7)
    assert config["learning_rate"] == 0.001 and "alternative_to" not in config


def test_plain_reading_names_who_leads_and_where_the_lead_is_not_clear(monkeypatch):
    many = 200
    results = [
        # the reference: every user's target at rank 1 or 2, three seeds
        *(_seed_result("ref", v, [1 + (u % 2) for u in range(many)]) for v in (0.30, 0.31, 0.32)),
        # far below, two seeds apart from the reference's
        *(_seed_result("weak", v, [20] * many) for v in (0.10, 0.11)),
        # close: seeds overlap the reference's, and a budget stopped one of them
        _seed_result("close", 0.305, [1 + (u % 2) for u in range(many)]),
        _seed_result("close", 0.315, [1 + (u % 2) for u in range(many)], stopped_by="time_budget"),
    ]
    text = quality_report.plain_reading(results, "ref")
    assert "**Seen items ranked.** `ref` leads with test NDCG@10 0.3100 ± 0.0100 (3 seeds)" in text
    assert "**Seen items removed.**" in text
    assert "| `weak` | 2 | 0.1050 ± 0.0071 | early stopping | +0.2050 | 20.5 | apart: every seed above |" in text
    assert "| `close` | 2 | 0.3100 ± 0.0071 | early stopping, time budget | +0.0000 | 0.0 | overlap |" in text
    assert "p 1.0000" in text  # the same ranks for every user: no paired difference at all
    assert "`ref` is not above `close` both beyond the seed spread and by the paired test" in text
    assert "it is above the other 1 run that way" in text
    assert "Not stopped by early stopping (their figures may still rise): `close`." in text
    # without the close run the reference clears both bars; a run that leads the reference is named
    clear = [r for r in results if r["_run"] != "close"]
    assert "`ref` is above every run beyond the seed spread and by the paired test" in (
        quality_report.plain_reading(clear, "ref")
    )
    flipped = quality_report.plain_reading(clear, "weak")
    assert "`ref` leads with test NDCG@10 0.3100 ± 0.0100 (3 seeds), not `weak`" in flipped
    assert "| `ref` | 3 | 0.3100 ± 0.0100 | early stopping | -0.2050 |" in flipped
    assert "`weak` is not above `ref` both beyond the seed spread and by the paired test (p < 0.05)." in flipped
    assert quality_report.plain_reading(clear, "absent") == ""

    # a report runs each paired test once: the reading reuses the comparison tables' tests, turned round
    computed = []
    counting = quality_report.paired_comparison
    monkeypatch.setattr(quality_report, "paired_comparison", lambda a, b: computed.append(1) or counting(a, b))
    tests = quality_report.PairedTests(results)
    tables = [quality_report.comparisons(results, "ref", ["ref", "weak", "close"], seen_removed=removed, tests=tests)
              for removed in (False, True)]  # fmt: skip
    assert len(computed) == 4  # two runs, two protocols
    assert quality_report.plain_reading(results, "ref", tests) == text and len(computed) == 4
    # the tables read run minus reference, the reading the reverse: the same interval, turned round
    assert "| weak | 200 | -0.8155 | [-0.8413, -0.7896] | 0.0001 |" in tables[0]
    assert "+0.8155 [+0.7896, +0.8413], p 0.0001" in text
