"""Every experiment composes, and every object in it instantiates from its config."""

import pytest
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

import lit_modules  # noqa: F401 - resolvers
from tests.conftest import EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("debug", [[], ["debug=fast"]])
def test_experiment_composes_and_instantiates(make_cfg, experiment, debug):
    cfg = make_cfg([f"experiment={experiment}", *debug])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.task_name == experiment
    assert OmegaConf.missing_keys(cfg) == set()
    datamodule = instantiate(cfg.data)
    assert datamodule.batch_size == cfg.data.batch_size
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    assert trainer.max_steps == cfg.trainer.max_steps
    if experiment.endswith("_paper"):
        return  # built on the meta device in tests/tokenizers/test_phaedra.py (97.8M parameters)
    module = instantiate(cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler, _recursive_=False)
    expected = {"fsq": {"morph"}, "phaedra": {"morph", "amp"}}.get(experiment, {"tokens"})
    assert set(module.tokenizer.streams) == expected
    optim = module.configure_optimizers()
    assert optim["lr_scheduler"]["interval"] == "step"


def test_user_data_configs_compose(make_cfg, tmp_path):
    cfg = make_cfg(["experiment=phaedra", "data=fields_npy", f"data.path={tmp_path}/x.npy", "data.layout=NTHW"])
    assert cfg.data.path.endswith("x.npy") and cfg.data.layout == "NTHW"
    cfg = make_cfg(["experiment=fsq", "data=fields_hdf5", "data.path=/my/run.hdf5"])
    assert cfg.data._target_.endswith("hdf5_datamodule")


def test_unknown_experiment_names_the_available_ones(make_cfg):
    with pytest.raises(MissingConfigException, match="experiment/nope") as err:
        make_cfg(["experiment=nope"])
    assert "phaedra" in str(err.value)


def test_missing_data_path_is_reported_by_key(make_cfg):
    cfg = make_cfg(["experiment=phaedra", "data=fields_hdf5"])
    assert OmegaConf.missing_keys(cfg) == {"data.path"}
