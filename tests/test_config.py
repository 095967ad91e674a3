"""Typed configuration: layer order, strict overrides with helpful errors, round trips."""
import pytest
import torch

from selfsup import config as C
from selfsup.errors import UserError


def test_layers_apply_in_order_defaults_preset_yaml_flags(tmp_path):
    # Paper default (ImageNet regime) for SimCLR's temperature is 0.1; the CIFAR preset sets 0.5.
    assert C.resolve({"data": {"image_size": 224}}).method_config.temperature == 0.1
    cfg = C.resolve({"data": {"image_size": 32}})
    assert cfg.preset == "cifar" and cfg.method_config.temperature == 0.5
    assert cfg.optim.name == "sgd" and cfg.train.batch_size == 512
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("simclr:\n  temperature: 0.3\ntrain:\n  batch_size: 64\n")
    user = C.merge_dicts(C.load_yaml(yaml_file), {"data": {"image_size": 32}, "train": {"batch_size": 32}})
    cfg = C.resolve(user)
    assert cfg.method_config.temperature == 0.3  # YAML beats the preset
    assert cfg.train.batch_size == 32  # flags beat YAML
    assert cfg.train.epochs == 200  # the preset beats the dataclass default


def test_resolution_fills_derived_values():
    small = C.resolve({"data": {"image_size": 32}})
    assert small.backbone.small_stem is True and small.data.cache_size == 32
    large = C.resolve({"data": {"image_size": 224}})
    assert large.backbone.small_stem is False and large.data.cache_size == 256
    assert large.preset == "imagenet" and large.optim.name == "lars" and large.backbone.name == "resnet50"


def test_unknown_key_names_the_nearest_valid_one():
    with pytest.raises(UserError, match=r"unknown config key 'train.epoch'.*did you mean 'epochs'"):
        C.resolve({"train": {"epoch": 3}})
    with pytest.raises(UserError, match=r"unknown config key 'simclr.temprature'.*'temperature'"):
        C.resolve({"simclr": {"temprature": 0.2}})
    with pytest.raises(UserError, match="unknown config key 'trian'"):
        C.resolve({"trian": {}})


def test_wrong_types_and_ranges_are_refused():
    with pytest.raises(UserError, match="train.epochs must be int"):
        C.resolve({"train": {"epochs": "ten"}})
    with pytest.raises(UserError, match=r"optim.momentum must be in \[0.0, 1.0\]"):
        C.resolve({"optim": {"momentum": 1.5}})
    with pytest.raises(UserError, match=r"^small_stem= is for ResNets; vit-tiny starts with its patch embedding"):
        C.resolve({"backbone": {"name": "vit-tiny", "small_stem": True}, "data": {"image_size": 32}})
    # A key that a pretrain flag sets names the flag too: the user typed --epochs, not train.epochs.
    with pytest.raises(UserError, match=r"^train.epochs \(epochs=\) must be in \[1, inf\], got -1$"):
        C.resolve({"train": {"epochs": -1}})
    with pytest.raises(UserError, match=r"^data.image_size \(image_size=\) must be in \[8, 4096\], got 0$"):
        C.resolve({"data": {"image_size": 0}})
    with pytest.raises(UserError, match="optim.name must be one of"):
        C.resolve({"optim": {"name": "adam"}})
    with pytest.raises(UserError, match="simclr.views.crop_scale must be a list"):
        C.resolve({"simclr": {"views": {"crop_scale": 0.5}}})
    assert C.resolve({"optim": {"lr": 1}}).optim.lr == 1.0  # ints are fine where floats are asked


def test_unknown_method_lists_valid_ones():
    with pytest.raises(UserError, match="unknown method 'simclrr'.*did you mean 'simclr'.*valid: .*simclr"):
        C.resolve({"method": "simclrr"})


def test_round_trip_through_dict_and_yaml():
    import yaml
    cfg = C.resolve({"data": {"image_size": 32, "path": "x"}, "simclr": {"views": {"crop_scale": [0.2, 1.0]}}})
    again = C.from_dict(yaml.safe_load(C.dump_yaml(cfg)))
    assert again == cfg
    assert again.method_config.views.crop_scale == (0.2, 1.0)


def test_set_assignments_parse_values_as_yaml():
    assert C.parse_assignment("optim.lr=0.3") == {"optim": {"lr": 0.3}}
    assert C.parse_assignment("simclr.views.crop_scale=[0.2, 1.0]") == {"simclr": {"views": {"crop_scale": [0.2, 1.0]}}}
    assert C.parse_assignment("train.compile=true") == {"train": {"compile": True}}
    with pytest.raises(UserError, match="KEY=VALUE"):
        C.parse_assignment("optim.lr")
    # An empty value would read as YAML null and be blamed on its type; an empty key names nothing.
    with pytest.raises(UserError, match=r"gives no value.*--set optim\.lr=0\.3"):
        C.parse_assignment("optim.lr= ")
    with pytest.raises(UserError, match="names no key"):
        C.parse_assignment("=0.3")
    assert C.parse_assignment("data.cache_dir=null") == {"data": {"cache_dir": None}}


def test_yaml_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        C.load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        C.load_yaml(bad)
    bad.write_text("method: simclr\ntrain:\n\tepochs: 1\n")  # a tab, as an editor may indent
    with pytest.raises(UserError, match=r"not valid YAML at line 3: found character '\\t' that cannot start any token$"):
        C.load_yaml(bad)
    with pytest.raises(UserError, match=r"config file '.*' is a folder; give a YAML file, such as a run's config.yaml$"):
        C.load_yaml(tmp_path)
    checkpoint = tmp_path / "last.pt"  # holds its config, but not as YAML
    torch.save({"config": {"method": "simclr"}}, checkpoint)
    with pytest.raises(UserError, match=r"config file '.*last.pt' is not a text file; give a YAML file, such as a "
                                        r"run's config.yaml \(the one beside last.pt\)$"):
        C.load_yaml(checkpoint)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        C.load_yaml(listy)


def test_saved_config_repeats_the_run_when_given_back():
    import yaml
    cfg = C.resolve({"data": {"image_size": 48, "path": "x"}, "out": "a", "optim": {"lr": 0.7},
                     "simclr": {"temperature": 0.3}})
    again = C.resolve(yaml.safe_load(C.dump_yaml(cfg)))
    assert again == cfg


def test_new_simclr_runs_end_their_head_with_batchnorm_and_old_checkpoints_keep_theirs():
    from selfsup.methods import build_method
    for size in (32, 224):  # both presets
        assert C.resolve({"data": {"image_size": size}}).method_config.projection_output_batch_norm is True
    old = C.to_dict(C.resolve({"data": {"image_size": 16}, "backbone": {"name": "resnet18-half"}}))
    del old["simclr"]["projection_output_batch_norm"]  # a checkpoint written before the option
    restored = C.from_dict(old)
    assert restored.method_config.projection_output_batch_norm is False
    head = build_method(restored).projection
    assert not isinstance(head[-1], torch.nn.BatchNorm1d) and head[-1].bias is not None
    assert isinstance(build_method(C.resolve({"data": {"image_size": 16}, "backbone": {"name": "resnet18-half"}}))
                      .projection[-1], torch.nn.BatchNorm1d)


@pytest.mark.parametrize("text, value", [("3e-4", 3e-4), ("1E5", 1e5), ("-2.5e-3", -2.5e-3), ("1.5e4", 1.5e4),
                                         (".5e1", 5.0), ("0.1", 0.1), ("7", 7), ("1e", "1e"), ("e5", "e5")])
def test_numbers_with_an_exponent_are_floats_in_set_and_yaml_files(text, value, tmp_path):
    # YAML 1.1 (PyYAML) reads 3e-4 as a string: README's --set optim.weight_decay=5e-4 was refused.
    assert C.parse_assignment(f"optim.lr={text}") == {"optim": {"lr": value}}
    (tmp_path / "run.yaml").write_text(f"optim:\n  lr: {text}\n")
    assert C.load_yaml(tmp_path / "run.yaml") == {"optim": {"lr": value}}


def test_written_exponents_reach_the_config():
    user = C.merge_dicts(C.parse_assignment("optim.weight_decay=5e-4"), C.parse_assignment("optim.betas=[0.9, 95e-2]"))
    cfg = C.resolve(C.merge_dicts(user, {"optim": {"name": "adamw"}}))
    assert cfg.optim.weight_decay == 5e-4 and cfg.optim.betas == (0.9, 0.95)


@pytest.mark.parametrize("changes, message", [
    ({"optim": {"lr": float("nan")}}, r"^optim.lr \(lr=\) must be a finite number, got nan$"),
    ({"optim": {"weight_decay_end": float("inf")}}, "optim.weight_decay_end must be a finite number"),
    ({"optim": {"weight_decay_end": -1.0}}, r"optim.weight_decay_end must be in \[0.0, inf\], got -1.0"),
    ({"optim": {"betas": [0.9, 1.0]}}, r"optim.betas must be in \[0.0, 1.0\), got \(0.9, 1.0\)"),
    ({"optim": {"betas": [2.0, -1.0]}}, r"optim.betas must be in \[0.0, 1.0\)"),
    ({"data": {"cache_size": 0}}, r"data.cache_size must be in \[8, 4096\], got 0"),
    ({"train": {"seed": 2**40}}, r"train.seed \(seed=\) must be in \[0, 2147483647\]"),
    ({"train": {"seed": -1}}, r"train.seed \(seed=\) must be in \[0, 2147483647\]"),
])
def test_values_that_would_fail_later_are_refused_by_name(changes, message):
    with pytest.raises(UserError, match=message):
        C.resolve(C.merge_dicts({"data": {"image_size": 32}}, changes))


def test_a_warm_up_not_shorter_than_the_run(capsys):
    # The user's own: refused, naming the key.
    with pytest.raises(UserError, match=r"optim.warmup_epochs 5 is not shorter than the run's 5 epochs.*"
                                        r"config=\{'optim': \{'warmup_epochs': 0.5\}\}"):
        C.resolve({"data": {"image_size": 32}, "train": {"epochs": 5}, "optim": {"warmup_epochs": 5}})
    # A preset's, made for a longer run: its share of that run (MAE's ImageNet recipe: 40 of 800).
    mae = C.resolve({"method": "mae", "backbone": {"name": "vit-tiny"}, "data": {"image_size": 224},
                     "train": {"epochs": 20}})
    assert mae.optim.warmup_epochs == pytest.approx(20 * 40 / 800)
    assert "warms up over 40 epochs, not fewer than this run's 20: over 1 instead" in capsys.readouterr().err
    # Shorter than the run: as given.
    assert C.resolve({"method": "mae", "backbone": {"name": "vit-tiny"}, "data": {"image_size": 224},
                      "train": {"epochs": 41}}).optim.warmup_epochs == 40


def test_a_learning_rate_of_zero_is_run_but_said(capsys):
    """lr 0 trains nothing: allowed (a speed measurement), never silently."""
    assert C.resolve({"data": {"image_size": 32}, "optim": {"lr": 0.0}}).optim.lr == 0
    assert "the learning rate is 0 (lr= / optim.lr): the weights will not change" in capsys.readouterr().err
    C.resolve({"data": {"image_size": 32}, "optim": {"lr": 1e-9}})
    assert "learning rate" not in capsys.readouterr().err


def test_layer_decay_counts_the_blocks_of_the_trained_network_only():
    from selfsup.optim import parameter_groups

    class Student(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(2))
            self.teacher = torch.nn.Module()
            self.teacher.blocks = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(6))
            self.teacher.requires_grad_(False)  # frozen: not trained, not counted
            self.head = torch.nn.Linear(2, 2)

    cfg = C.OptimConfig(layer_decay=0.5, exclude_bias_and_norm=False)
    model = Student()
    scale_of = {id(p): g["lr_scale"] for g in parameter_groups(model, cfg) for p in g["params"]}
    assert [scale_of[id(model.blocks[i].weight)] for i in (0, 1)] == [0.25, 0.5]  # 0.5 ** (2 + 1 - (i + 1))
    assert scale_of[id(model.head.weight)] == 1.0


def test_options_of_another_optimizer_are_refused():
    with pytest.raises(UserError, match=r"optim.betas is for adamw; the optimizer is sgd \(optimizer=\)"):
        C.resolve({"data": {"image_size": 32}, "optim": {"name": "sgd", "betas": [0.9, 0.95]}})
    with pytest.raises(UserError, match=r"optim.momentum is for sgd and lars; the optimizer is adamw"):
        C.resolve({"data": {"image_size": 32}, "optim": {"name": "adamw", "momentum": 0.8}})
    with pytest.raises(UserError, match="optim.lars_eta is for lars"):
        C.resolve({"data": {"image_size": 32}, "optim": {"lars_eta": 0.02}})  # the cifar preset: sgd
    # A preset's own values for its optimizer are no user's choice: switching optimizer keeps working.
    assert C.resolve({"data": {"image_size": 224}, "optim": {"name": "adamw"}}).optim.name == "adamw"


def test_a_vit_preset_given_with_a_resnet_is_said(capsys):
    cfg = C.resolve({"method": "dino", "preset": "cifar-vit", "backbone": {"name": "resnet18"}})
    assert cfg.preset == "cifar-vit" and cfg.backbone.patch_size is None
    assert ("warning: preset='cifar-vit' is dino's recipe for a ViT; resnet18 is trained with it as asked (cifar is "
            "the recipe for a ResNet)") in capsys.readouterr().err
    C.resolve({"method": "dino", "backbone": {"name": "resnet18"}, "data": {"image_size": 32}})  # chosen: silent
    C.resolve({"method": "dino", "preset": "cifar-vit", "backbone": {"name": "vit-tiny"}, "data": {"image_size": 32}})
    assert "recipe for a ViT" not in capsys.readouterr().err


def test_the_start_line_names_the_network_and_crops_that_presets_set_per_method():
    """--backbone vit-small alone gives dino patches of 4 at 32 px and multi-crop, simclr neither:
    a comparison must see that on the start line, not only in config.yaml."""
    from selfsup.train import network_and_views

    def said(method: str, backbone: str, size: int) -> str:
        return network_and_views(C.resolve({"method": method, "backbone": {"name": backbone},
                                            "data": {"image_size": size, "path": "x"}}))

    assert said("dino", "vit-tiny", 32) == "vit-tiny/4 at 32 px (drop path 0.1), 2 x 32 px + 6 x 16 px crops"
    assert said("simclr", "resnet18", 32) == "resnet18 at 32 px"
    assert said("dino", "resnet50", 224) == "resnet50 at 224 px, 2 x 224 px + 8 x 96 px crops"
    assert said("mae", "vit-tiny", 64) == "vit-tiny/4 at 64 px"


def test_a_presets_patch_size_that_does_not_fit_the_image_says_it_is_the_presets():
    """iBOT's imagenet preset takes DINOv2's 14-pixel patches (224 = 16 x 14): at 96 px the error
    must not read as if the user had asked for 14."""
    user = {"method": "ibot", "backbone": {"name": "vit-small"}, "data": {"image_size": 96, "path": "x"}}
    with pytest.raises(UserError, match=r"patch size 14 \(the imagenet preset's\) needs image sides that are "
                                        r"multiples of 14, got 96x96; use image_size=84 or 98"):
        C.resolve(user)
    with pytest.raises(UserError, match=r"patch size 14 needs"):  # the user's own 14
        C.resolve({**user, "method": "simclr", "backbone": {"name": "vit-small", "patch_size": 14}})
    assert C.resolve({**user, "method": "mae", "backbone": {"name": "vit-small", "patch_size": 16}}).backbone.patch_size == 16
