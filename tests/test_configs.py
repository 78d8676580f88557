"""Every experiment composes, and every object in it instantiates from its config; configs inherit, not copy."""

import inspect
import json

import pytest
from hydra.errors import MissingConfigException
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from tests.helpers import EXPERIMENTS, describe
from tokenizers.released import FULL_CONFIGS, RELEASES, SPECS, released_kind

# what an experiment may set otherwise than load_released's default (the options it takes): the pixel range that
# LlamaGen's [-1, 1] network is fed from
RELEASED_OPTIONS = {"pixel_range"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("debug", [[], ["debug=fast"]])
def test_experiment_composes_and_instantiates(make_cfg, experiment, debug):
    cfg = make_cfg([f"experiment={experiment}", *debug])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.task_name == experiment
    assert OmegaConf.missing_keys(cfg) == set()
    datamodule = instantiate(cfg.data)
    assert datamodule.batch_size == cfg.data.batch_size
    if "adapter" in cfg.data:  # tokenizer data; token sequences have none
        assert type(datamodule.adapter).__name__ == cfg.data.adapter._target_.rpartition(".")[2]
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    assert trainer.max_steps == cfg.trainer.max_steps
    if cfg.model.get("init_from") is not None:
        check_the_released_architecture(cfg)
    if not describe(experiment)["cpu"]:
        return  # built on the meta device in tests/test_contract.py
    module = instantiate(cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler, _recursive_=False)
    optim = module.configure_optimizers()
    assert optim["lr_scheduler"]["interval"] == "step"


def check_the_released_architecture(cfg) -> None:
    """An experiment that starts from released weights (model.init_from), which are not in the repository: its
    tokenizer is the full-size released model's, as load_released builds it (every argument equal, defaults included),
    and it looks for the file where the download command of the preflight message puts it."""
    spec = OmegaConf.to_container(cfg.model.tokenizer, resolve=True)
    cls = get_class(spec["_target_"])
    kind = released_kind(cls, spec)
    assert kind is not None, f"model.init_from={cfg.model.init_from}: {cls.__name__} takes no released weights"
    assert cfg.model.init_from.endswith("/" + RELEASES[kind].hub_file)
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    built = json.loads(json.dumps({**defaults, **spec}))  # tuples as lists, like the released spec's
    released = SPECS[kind](kind, FULL_CONFIGS[kind])
    differ = {k: (built.get(k), v) for k, v in released.items() if k not in RELEASED_OPTIONS and built.get(k) != v}
    assert not differ, f"model.tokenizer differs from the released {kind} (config, released): {differ}"


def test_user_data_configs_inherit_the_defaults_and_swap_the_source(make_cfg, tmp_path):
    embedded = make_cfg([])
    cfg = make_cfg(["data=fields_npy", f"data.source.path={tmp_path}/x.npy", "data.source.layout=NTHW"])
    assert cfg.data.source._target_.endswith("NpyFields") and cfg.data.source.layout == "NTHW"
    assert {k: v for k, v in cfg.data.items() if k != "source"} == {
        k: v for k, v in embedded.data.items() if k != "source"
    }
    cfg = make_cfg(["data=fields_hdf5", "data.source.path=/my/run.hdf5"])
    assert dict(cfg.data.source) == {
        "_target_": "datamodules.sources.HDF5Fields",
        "path": "/my/run.hdf5",
        "variables": None,
        "splits": "auto",
    }
    eeg, files = make_cfg(["data=eeg"]), make_cfg(["data=eeg_files", "data.source.path=/my/edf"])
    assert set(files.data.source) == {"_target_", "path", "picks"}  # none of the SCP source's keys
    assert {k: v for k, v in files.data.items() if k != "source"} == {
        k: v for k, v in eeg.data.items() if k != "source"
    }
    cfg = make_cfg(["data=image_folder", "data.source.path=/my/images"])
    assert dict(cfg.data.source) == {"_target_": "datamodules.images.ImageFolder", "path": "/my/images"}
    galaxies = make_cfg(["data=galaxies"])
    for name, target in (("galaxies_parquet", "GalaxyParquet"), ("galaxies_fits", "GalaxyFits")):
        cfg = make_cfg([f"data={name}", "data.source.path=/my/galaxies"])
        assert cfg.data.source._target_ == f"datamodules.galaxies.{target}" and "n_objects" not in cfg.data.source
        assert {k: v for k, v in cfg.data.items() if k != "source"} == {
            k: v for k, v in galaxies.data.items() if k != "source"
        }


def test_unknown_experiment_names_the_available_ones(make_cfg):
    with pytest.raises(MissingConfigException, match="experiment/nope") as err:
        make_cfg(["experiment=nope"])
    assert all(e in str(err.value) for e in EXPERIMENTS)


@pytest.mark.parametrize(
    "data", ["fields_hdf5", "fields_npy", "eeg_files", "image_folder", "galaxies_parquet", "galaxies_fits"]
)
def test_missing_data_path_is_reported_by_key(make_cfg, data):
    assert OmegaConf.missing_keys(make_cfg([f"data={data}"])) == {"data.source.path"}
