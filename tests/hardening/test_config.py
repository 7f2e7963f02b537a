"""Bad settings and hyper-parameters: one clear line naming the key, before any data is read."""

from __future__ import annotations

import pytest

from tests.conftest import synthetic_rows, write_inter
from tests.hardening.helpers import TINY_TRAIN, assert_clear_error, cli

# (--set value, fragments of the error); each on `train --model sasrec --dataset ml-100k` unless a model is named
BAD_SETTINGS = {
    "boolean mask_history=abc": ("mask_history=abc", ["mask_history: expected true or false", "--set"]),
    "boolean show_progress=2": ("show_progress=2", ["show_progress: expected true or false"]),
    "seed=abc": ("seed=abc", ["seed: expected an integer from 0 to 4294967295"]),
    "seed=2**64-1": ("seed=18446744073709551615", ["seed: expected an integer from 0 to 4294967295, got 1844"]),
    "seed=2**32 (past NumPy's seeds)": ("seed=4294967296", ["seed: expected an integer from 0 to 4294967295"]),
    "seed=-1": ("seed=-1", ["seed: expected an integer from 0 to 4294967295"]),
    "learning_rate=nan": ("learning_rate=.nan", ["learning_rate: expected a non-negative number"]),
    "learning_rate=-1": ("learning_rate=-1", ["learning_rate: expected a non-negative number"]),
    "epochs=0": ("epochs=0", ["epochs: expected a positive integer"]),
    "train_batch_size=ten": ("train_batch_size=ten", ["train_batch_size: expected a positive integer"]),
    "topk=0": ("topk=0", ["topk: expected a positive integer"]),
    "split=random": ("split=random", ["split: expected one of"]),
    "window_stride=0": ("window_stride=0", ["window_stride: expected a positive integer"]),
    "window_stride past L": ("window_stride=400", ["window_stride: expected at most MAX_ITEM_LIST_LENGTH = 50"]),
    "time_values=float": ("time_values=float", ["time_values: expected one of"]),
    "temporal_cut_quantile=2": ("temporal_cut_quantile=2", ["temporal_cut_quantile: expected a number in [0, 1)"]),
    "device=gpu0": ("device=gpu0", ["device: expected auto, cpu, cuda or cuda:N"]),
    "hidden_size=-4": ("hidden_size=-4", ["hidden_size: expected a positive integer"]),
    "hidden_size=0": ("hidden_size=0", ["hidden_size: expected a positive integer"]),
    "n_layers=two": ("n_layers=two", ["n_layers: expected a positive integer"]),
    "hidden_dropout_prob=2": ("hidden_dropout_prob=2", ["hidden_dropout_prob: expected a number in [0, 1)"]),
    "layer_norm_eps=0": ("layer_norm_eps=0", ["layer_norm_eps: expected a positive number"]),
    "hidden_act=sigmoidal": ("hidden_act=sigmoidal", ["hidden_act: expected one of"]),
    "n_heads=3 (does not divide 64)": ("n_heads=3", ["n_heads (3) must divide hidden_size (64)"]),
    "tim4rec head_dim=48": ("head_dim=48", ["is not a multiple of head_dim 48"], "tim4rec"),
    "tim4rec time_mode=clock": ("time_mode=clock", ["time_mode: expected one of"], "tim4rec"),
    "tim4rec is_ffn=maybe": ("is_ffn=maybe", ["is_ffn: expected true or false"], "tim4rec"),
    "tisasrec time_span=10**12": ("time_span=1000000000000", ["time_span: expected an integer from 1 to"], "tisasrec"),
    "tisasrec time_span=0": ("time_span=0", ["time_span: expected an integer from 1 to 1048576"], "tisasrec"),
    "lrurec r_min > r_max": ("r_min=0.99", ["need r_min < r_max"], "lrurec"),
    "bert4rec mask_ratio=1": ("mask_ratio=1", ["mask_ratio: expected a number in (0, 1)"], "bert4rec"),
    "unknown key": ("learnin_rate=0.1", ["unknown config key 'learnin_rate'"]),
}


@pytest.mark.parametrize("case", BAD_SETTINGS, ids=list(BAD_SETTINGS))
def test_bad_setting_is_one_clear_error(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default output folder would be under runs/ here
    assignment, fragments, *model = BAD_SETTINGS[case]
    code, err = cli(
        capsys, "train", "--model", (model or ["sasrec"])[0], "--dataset", "no-such-data", "--set", assignment
    )
    assert_clear_error(code, err, *fragments)  # the config is refused before the (missing) dataset is looked at
    assert not any(tmp_path.iterdir())


# (command line, fragments of the error): options of recommend and serve, refused before the model loads
BAD_OPTIONS = {
    "recommend --threads -1": (["recommend", "best.pt", "--threads", "-1"], ["threads: expected a positive integer"]),
    "recommend --threads 0": (["recommend", "best.pt", "--threads", "0"], ["threads: expected a positive integer"]),
    "serve --threads 0": (["serve", "best.pt", "--threads", "0"], ["threads: expected a positive integer, got 0"]),
}


@pytest.mark.parametrize("case", BAD_OPTIONS, ids=list(BAD_OPTIONS))
def test_bad_option_is_one_clear_error(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args, fragments = BAD_OPTIONS[case]
    assert_clear_error(*cli(capsys, *args), *fragments)
    assert not any(tmp_path.iterdir())


def test_a_model_too_large_for_the_memory(tmp_path, monkeypatch, capsys):
    """A size the allocator refuses at once (the item table alone would be more than the 128 TiB a 64-bit
    process can address, whatever the overcommit setting): one line naming the model and its sizes, no folder."""
    monkeypatch.chdir(tmp_path)
    data = write_inter(tmp_path / "data.inter", synthetic_rows())
    code, err = cli(
        capsys, "train", *TINY_TRAIN, "--dataset", data, "--set", f"hidden_size={2**42}", "--set", "n_heads=1"
    )
    assert_clear_error(code, err, "model 'sasrec' does not fit in memory", f"hidden_size={2**42}", "n_items=38")
    assert [path.name for path in tmp_path.iterdir()] == ["data.inter"]


def test_a_config_file_value_names_its_file(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("model: sasrec\nhidden_dropout_prob: 1.5\n")
    code, err = cli(capsys, "train", "--config", tmp_path / "c.yaml", "--dataset", "x")
    assert_clear_error(code, err, "hidden_dropout_prob: expected a number in [0, 1)", "c.yaml")


def test_non_utf8_config_file(tmp_path, capsys):
    (tmp_path / "c.yaml").write_bytes("model: sasrec\n# caf\u00e9\n".encode("latin-1"))
    assert_clear_error(*cli(capsys, "train", "--config", tmp_path / "c.yaml"), "c.yaml", "not UTF-8")
