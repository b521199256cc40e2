"""The architecture contract (docs/ARCHITECTURE.md): config.py, convert.py and synthetic.py find the
module by model_type and ask it; the network reads exactly the tensors the module lists; the
weights a decoded token reads (`cactus bench`) are every weight of the network, once."""

from __future__ import annotations

import copy
import dataclasses
import types

import numpy as np
import pytest

from cactus import engine, models, shapes, synthetic
from cactus.config import ConfigError, ModelConfig
from cactus.models import lfm2
from cactus.quant import QTensor
from cactus.weights import WeightDir

CONTRACT = ("MODEL_TYPES", "Config", "tensors", "Model", "from_hf", "weight_format", "random_init")


@pytest.mark.parametrize("model_type", list(models.MODULES))
def test_every_architecture_keeps_the_contract(model_type):
    arch = models.architecture(model_type)
    assert all(hasattr(arch, name) for name in CONTRACT)
    assert issubclass(arch.Config, ModelConfig) and models.ARCHITECTURES[model_type] is arch.Model
    for name in ("make_cache", "forward", "definition", "token_reads"):
        assert callable(getattr(arch.Model, name))


@pytest.mark.parametrize("model_type", ["llama", ["lfm2"], None])
def test_unknown_model_types_name_the_ones_there_are(model_type):
    with pytest.raises(ConfigError, match=r"model_type .* is not supported \(cactus runs lfm2, lfm2_moe\)"):
        ModelConfig.from_dict(dict(shapes.config("tiny"), model_type=model_type), "x/config.json")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synthetic.write("tiny", "int4", tmp_path_factory.mktemp("arch") / "tiny", progress=False)


def test_the_network_reads_exactly_the_tensors_its_module_lists(tiny, monkeypatch):
    read = {}
    real = WeightDir.tensor

    def spy(self, name, shape):
        read[name] = tuple(shape)
        return real(self, name, shape)

    monkeypatch.setattr(WeightDir, "tensor", spy)
    m = engine.load(tiny)
    assert isinstance(m.config, lfm2.Config)
    assert read == lfm2.tensors(m.config) == {n: tuple(i.shape) for n, i in m.weights.info.items()}


def _weights_held(net) -> list:
    """Every weight the network holds: its own and its layers' dataclass fields."""
    held = [net.embed, net.lm_head, net.norm]
    for b in net.blocks:
        for part in (b, b.op, b.ffn):
            held += [getattr(part, f.name) for f in dataclasses.fields(part)]
    return [t for t in held if isinstance(t, (QTensor, np.ndarray))]


def test_token_reads_lists_every_weight_once_with_its_share(tiny):
    m = engine.load(tiny)
    reads = list(m.net.token_reads())
    assert sorted(map(id, (t for _, t, _ in reads))) == sorted(map(id, _weights_held(m.net)))
    cfg = m.config
    shares = {part: {s for p, _, s in reads if p == part} for part, _, _ in reads}
    assert shares == {"dense": {1}, "lm_head": {1}, "experts": {cfg.num_experts_per_tok / cfg.num_experts},
                      "embed": {1 / cfg.vocab_size}}


def test_a_second_architecture_is_found_by_its_model_type(tmp_path, monkeypatch):
    """A module registered under a new model_type is what config, synthetic and the engine use."""
    seen = []

    class Config(lfm2.Config):
        @classmethod
        def parse(cls, f):
            seen.append("parse")
            return super().parse(f)

    def tensors(cfg):
        seen.append("tensors")
        return lfm2.tensors(cfg)

    toy = types.SimpleNamespace(**{**{n: getattr(lfm2, n) for n in CONTRACT}, "MODEL_TYPES": ("toy",),
                                   "Config": Config, "tensors": tensors})
    monkeypatch.setitem(models.MODULES, "toy", toy)
    monkeypatch.setitem(models.ARCHITECTURES, "toy", lfm2.Model)
    monkeypatch.setitem(shapes.SHAPES, "toy", dict(copy.deepcopy(shapes.SHAPES["tiny"]), model_type="toy"))
    m = engine.load(synthetic.write("toy", "int8", tmp_path / "toy", progress=False))
    assert type(m.config) is Config and m.config.model_type == "toy" and {"parse", "tensors"} <= set(seen)
    assert m.forward([1, 2, 3], last_only=True).shape == (1, 512)
