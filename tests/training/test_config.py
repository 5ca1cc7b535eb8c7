"""salt_fast.config: defaults, YAML files, overrides, validation, round trip, documentation."""

import dataclasses
from pathlib import Path

import pytest

from salt_fast.config import ConfigError, TrainConfig, describe_config, load_config, save_config
from support import ROOT

CONFIG_DIR = ROOT / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def _leaf_keys(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and not k.endswith("_overrides"):
            yield from _leaf_keys(v, key)
        else:
            yield key


def test_defaults_are_the_paper_recipe():
    cfg = load_config(None)
    assert cfg == TrainConfig()
    o = cfg.optim
    assert (o.steps, o.lr_start, o.lr_peak, o.lr_end, o.warmup_steps) == (240_000, 2e-4, 6.25e-4, 1e-6, 10_000)
    assert (o.weight_decay_start, o.weight_decay_end, o.betas, o.grad_clip) == (0.04, 0.4, (0.9, 0.95), 0.02)
    assert o.ema_momentum == 0.99925
    assert (cfg.data.frames, cfg.data.frame_step, cfg.data.resolution, cfg.data.batch_size) == (16, 4, 224, 24)
    assert (cfg.model.encoder, cfg.masking.configs, cfg.masking.truncation) == ("vit_l", "multi_block", "min")


def test_configs_directory_is_complete():
    names = {p.name for p in CONFIGS}
    expected = {f"salt_vit_{s}.yaml" for s in "lhgG"}
    expected |= {"pixel_vit_l.yaml", "vjepa_vit_l.yaml", "quickstart_pixel.yaml", "quickstart_salt.yaml"}
    assert expected <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_loads(path):
    cfg = load_config(str(path))
    assert path.read_text().startswith("#"), "each config starts with a comment header"
    cfg.model.encoder_vit()
    cfg.model.teacher_vit()
    cfg.model.predictor_vit()


def test_paper_configs():
    pixel = load_config(str(CONFIG_DIR / "pixel_vit_l.yaml"))
    assert (pixel.stage, pixel.model.encoder, pixel.optim.steps, pixel.optim.warmup_steps) == ("pixel", "vit_l", 80_000, 10_000)
    for s in "lhgG":
        cfg = load_config(str(CONFIG_DIR / f"salt_vit_{s}.yaml"))
        assert (cfg.stage, cfg.model.encoder, cfg.model.teacher, cfg.optim.steps) == ("salt", f"vit_{s}", "vit_l", 160_000)
        assert cfg.model.teacher_checkpoint == "runs/pixel_vit_l/encoder.safetensors"
        big = s in "gG"
        assert (cfg.runtime.distributed == "fsdp") == big and cfg.runtime.activation_checkpointing == big
    vjepa = load_config(str(CONFIG_DIR / "vjepa_vit_l.yaml"))
    assert (vjepa.stage, vjepa.model.encoder, vjepa.optim.steps) == ("vjepa", "vit_l", 240_000)


def test_quickstart_configs_are_tiny_and_chained():
    pixel = load_config(str(CONFIG_DIR / "quickstart_pixel.yaml"))
    salt = load_config(str(CONFIG_DIR / "quickstart_salt.yaml"))
    for cfg in (pixel, salt):
        assert cfg.data.train_lists == [] and cfg.optim.steps <= 100 and cfg.data.resolution <= 64
        assert cfg.optim.grad_clip == 1.0 and cfg.optim.lr_peak == 1e-3
        assert cfg.model.predictor_vit().head_dim == 24
    assert salt.model.teacher_checkpoint == str(Path(pixel.output_dir) / "encoder.safetensors")
    assert salt.model.teacher_vit() == pixel.model.encoder_vit()


def test_overrides_nested_lists_and_dicts(tmp_path):
    cfg = load_config(
        "configs/quickstart_pixel.yaml",
        [
            "optim.steps=100",
            "optim.lr_peak=1e-3",  # YAML 1.1 would read this as a string
            "optim.betas=[0.8, 0.9]",
            "model.encoder_overrides.num_heads=4",
            "model.encoder_overrides.mlp_hidden=256",
            "data.train_lists=[a.txt,b.txt]",
            "data.weights=[1, 3]",
            "model.teacher_checkpoint=null",
            "log={every: 7, progress: false}",
            "seed=5",
        ],
    )
    assert cfg.optim.steps == 100 and cfg.optim.lr_peak == 1e-3 and isinstance(cfg.optim.lr_peak, float)
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.model.encoder_overrides == {"depth": 2, "num_heads": 4, "mlp_hidden": 256}  # merged with the file's
    assert cfg.model.encoder_vit().num_heads == 4
    assert cfg.data.train_lists == ["a.txt", "b.txt"] and cfg.data.weights == [1.0, 3.0]
    assert cfg.model.teacher_checkpoint is None
    assert (cfg.log.every, cfg.log.progress, cfg.log.tensorboard) == (7, False, True)
    assert cfg.seed == 5
    # A whole dict field replaces; ints are accepted for floats.
    cfg = load_config(None, ["model.encoder_overrides={depth: 3}", "optim.grad_clip=1"])
    assert cfg.model.encoder_overrides == {"depth": 3} and cfg.optim.grad_clip == 1.0
    # Later overrides win.
    assert load_config(None, ["optim.steps=5", "optim.steps=7", "optim.warmup_steps=0"]).optim.steps == 7


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lr_peek=1", "optim.lr_peek"),
        ("nope=1", "nope"),
        ("optim.steps.x=1", "optim.steps.x"),
        ("model.encoder_overrides.depthh=2", "model.encoder_overrides.depthh"),
        ("model.encoder_overrides.rope_mode=vjepa2", "model.encoder_overrides.rope_mode"),
    ],
)
def test_unknown_keys_rejected(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"optim\.stepz: unknown key; did you mean 'steps'"):
        load_config(str(path))
    path.write_text("optim: 3\n")
    with pytest.raises(ConfigError, match=r"optim: expected mapping"):
        load_config(str(path))


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr_peak=fast", "optim.lr_peak: expected float, got 'fast' (str)"),
        ("optim.steps=1.5", "optim.steps: expected int, got 1.5 (float)"),
        ("optim.steps=true", "optim.steps: expected int, got True (bool)"),
        ("optim.steps=null", "optim.steps: expected int, got None"),
        ("runtime.compile=1", "runtime.compile: expected bool"),
        ("data.train_lists=a.txt", "data.train_lists: expected list[str]"),
        ("data.train_lists=[a.txt, 3]", "data.train_lists[1]: expected str, got 3 (int)"),
        ("data.weights=[x]", "data.weights[0]: expected float"),
        ("optim.betas=[0.9]", "optim.betas: expected tuple[float, float]"),
        ("model.encoder_overrides=3", "model.encoder_overrides: expected mapping"),
        ("model.encoder=null", "model.encoder: expected str, got None"),
    ],
)
def test_wrong_types_rejected(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("stage=supervised", "stage"),
        ("model.rope_mode=odd", "model.rope_mode"),
        ("model.attn_backend=magic", "model.attn_backend"),
        ("data.decoder=gpu", "data.decoder"),
        ("masking.configs=blocks", "masking.configs"),
        ("masking.truncation=max", "masking.truncation"),
        ("runtime.precision=fp16", "runtime.precision"),
        ("runtime.distributed=deepspeed", "runtime.distributed"),
        ("runtime.kernels=cuda", "runtime.kernels"),
        ("checkpoint.resume=", "checkpoint.resume"),  # empty value: null, not a str
        ("checkpoint.resume=' '", "checkpoint.resume"),
        ("model.encoder=vit_xxl", "model.encoder"),
        ("model.teacher=vit_xxl", "model.teacher"),
    ],
)
def test_bad_choices_rejected(override, key):
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.") + r"(\[\d\])?:"):
        load_config(None, [override])


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["optim.steps=0"], "optim.steps"),
        (["data.batch_size=0"], "data.batch_size"),
        (["optim.lr_peak=0"], "optim.lr_peak"),
        (["optim.lr_end=-1e-6"], "optim.lr_end"),
        (["optim.lr_start=0.0"], "optim.lr_start"),
        (["optim.steps=100"], "optim.warmup_steps"),  # default warmup 10k > 100 steps
        (["checkpoint.keep=0"], "checkpoint.keep"),
        (["checkpoint.every=0"], "checkpoint.every"),
        (["data.max_bad_fraction=1.5"], "data.max_bad_fraction"),
        (["data.max_bad_fraction=-0.1"], "data.max_bad_fraction"),
        (["optim.betas=[0.9, 1.0]"], "optim.betas"),
        (["optim.betas=[-0.1, 0.9]"], "optim.betas"),
        (["optim.grad_clip=0"], "optim.grad_clip"),
        (["optim.ema_momentum=1.5"], "optim.ema_momentum"),
        (["data.frames=15"], "data.frames"),
        (["data.resolution=100"], "data.resolution"),
        (["data.num_workers=-1"], "data.num_workers"),
        (["data.train_lists=[a.txt]", "data.weights=[1, 2]"], "data.weights"),
        (["model.encoder_overrides.depth=0"], "model.encoder_overrides"),
        (["model.predictor_overrides.num_heads=5"], "model.predictor_overrides"),
        (["log.every=0"], "log.every"),
    ],
)
def test_bad_ranges_rejected(overrides, key):
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.") + ":"):
        load_config(None, overrides)


def test_malformed_overrides():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["optim.steps"])
    with pytest.raises(ConfigError, match="malformed"):
        load_config(None, ["optim..steps=3"])


@pytest.mark.parametrize("path", [None, *CONFIGS], ids=lambda p: getattr(p, "name", "defaults"))
def test_save_load_round_trip(tmp_path, path):
    cfg = load_config(
        None if path is None else str(path),
        ["data.train_lists=[x.txt, y.txt]", "data.weights=[0.25, 0.75]", "optim.lr_end=1.2345678901234e-7"],
    )
    out = tmp_path / "config.yaml"
    save_config(cfg, str(out))
    again = load_config(str(out))
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert isinstance(again.optim.betas, tuple)


def test_to_dict_is_plain_and_detached():
    cfg = load_config(str(CONFIG_DIR / "quickstart_salt.yaml"))
    d = cfg.to_dict()
    assert d["optim"]["betas"] == [0.9, 0.95]
    d["model"]["encoder_overrides"]["depth"] = 99
    assert cfg.model.encoder_overrides["depth"] == 2


def test_describe_config_covers_every_field():
    table = describe_config()
    rows = [line for line in table.splitlines()[2:]]
    keys = [row.split("|")[1].strip().strip("`") for row in rows]
    assert keys == list(_leaf_keys(TrainConfig().to_dict()))
    assert all(row.count("|") == 4 for row in rows), "help text must not break the table"
    assert "| `optim.lr_peak` | `0.000625` |" in table
    assert "| `data.weights` | `null` |" in table
    for row in rows:
        assert row.split("|")[3].strip(), row  # every key has a meaning


def test_every_field_has_help():
    def walk(cls):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f.name
            if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
                walk(f.default_factory)

    walk(TrainConfig)


def test_readme_lists_every_key_as_describe_config_does():
    readme = (ROOT / "README.md").read_text()
    assert describe_config() in readme, "README's config table is stale: paste python -m salt_fast.config --describe"
