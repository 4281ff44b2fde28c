"""`python -m teachers.convert PICKLE OUT_DIR` (`distill-convert`): an NVlabs EDM network pickle as a toolkit folder.

NVlabs publishes EDM's (and EDM2's) networks as pickles made with `torch_utils.persistence`: each network object is stored as a
call `_reconstruct_persistent_obj(meta)` whose meta carries the source code of its module, which unpickling would
`exec`. This module never runs it. A restricted unpickler maps every global the file names to an inert stand-in
(persistent objects become records of their class name and state; torch modules become records of their state;
tensors rebuild from their storages with `torch.load(weights_only=True)`), and refuses anything it does not know,
naming it. The network's constructor arguments (recorded by the persistence module) and its tensors are then written
as config.json + safetensors, which `teachers.load(OUT_DIR)` reads as an EDM denoiser.
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import torch

from teachers.errors import ConfigError

PRECOND_CLASSES = {"EDMPrecond": "edm", "VPPrecond": "vp", "VEPrecond": "ve", "Precond": "edm"}  # Precond: EDM2's
NETWORK_CLASSES = ("SongUNet", "DhariwalUNet")
EDM2_NETWORK = "EDM2UNet"  # EDM2's `UNet`, always under its `Precond` (EDM's coefficients), stored as `unet`
LAYER_CLASSES = ("Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding", "FourierEmbedding", "UNet", "Block",
                 "MPConv", "MPFourier")
OTHER_CLASSES = ("EDMLoss", "VPLoss", "VELoss", "EDM2Loss", "AugmentPipe", "StandardRGBEncoder")  # beside the network; not read
LATENT_ENCODERS = ("StabilityVAEEncoder",)  # EDM2's img512 networks work on Stable Diffusion VAE latents
KNOWN_PERSISTENT = (*PRECOND_CLASSES, *NETWORK_CLASSES, *LAYER_CLASSES, *OTHER_CLASSES, *LATENT_ENCODERS)
REFUSED_PRECONDS = {"iDDPMPrecond": "iDDPM's preconditioning (a rounded sigma table) is not supported; EDMPrecond, "
                                    "VPPrecond, VEPrecond and EDM2's Precond are"}
EDM2_UNUSED = ("logvar_fourier.", "logvar_linear.")  # EDM2's uncertainty head: trains the loss weighting, not sampled
NETWORK_KEY = "ema"  # the EMA network of an NVlabs snapshot: the one its FID figures are for
INIT_KEYS = ("img_resolution", "img_channels", "label_dim", "use_fp16", "model_type", "sigma_min", "sigma_max", "sigma_data",
             "beta_d", "beta_min", "M", "epsilon_t", "logvar_channels")


class Stub:
    """An inert record of a pickled object: its class name and the state the pickle gave it. Nothing of it runs."""

    class_name = "object"
    state: dict = {}

    def __init__(self, class_name: str, state: dict | None = None):
        self.class_name, self.state = class_name, dict(state or {})

    def __setstate__(self, state) -> None:  # BUILD of a torch module stand-in
        self.state = dict(state) if isinstance(state, dict) else {"state": state}


def persistent_stub(meta: dict) -> Stub:
    """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` stands for: a record of a known class; its
    module_src is never looked at, let alone executed."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise pickle.UnpicklingError("a persistent object without a class name")
    name = meta["class_name"]
    if name not in KNOWN_PERSISTENT and name not in REFUSED_PRECONDS:
        raise pickle.UnpicklingError(f"unknown persistent class {name}")
    return Stub(name, dict(meta.get("state") or {}))


def torch_module_stub(module: str, name: str) -> type:
    """A stand-in class for a torch.nn module class (ModuleDict, ModuleList, SiLU, ...): instances hold their state."""
    return type(name, (Stub,), {"class_name": name, "__module__": __name__})


def reconstructor(cls, base, state):
    """copyreg._reconstructor for stand-in classes only."""
    if not (isinstance(cls, type) and issubclass(cls, Stub)):
        raise pickle.UnpicklingError(f"copyreg._reconstructor of {cls!r} is not allowed")
    return cls.__new__(cls)


def load_storage(data: bytes):
    """torch.storage._load_from_bytes, with weights_only: a storage's bytes hold a tensor-only torch.save."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def numpy_scalar(dtype, data: bytes | None = None):
    """numpy's scalar reconstructor for plain numeric dtypes (EDM stores a few np.float64 constants)."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype!r} is not allowed")
    return np.frombuffer(data, dtype=dtype)[0].item()


class EasyDict(dict):
    """dnnlib.EasyDict's stand-in: a plain dict."""


ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): persistent_stub,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): lambda data, requires_grad, hooks: data,
    ("torch._utils", "_rebuild_parameter_with_state"): lambda data, requires_grad, hooks, state: data,
    ("torch.storage", "_load_from_bytes"): load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("copyreg", "_reconstructor"): reconstructor,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "object"): object,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): numpy_scalar,
    ("numpy._core.multiarray", "scalar"): numpy_scalar,
    ("dnnlib.util", "EasyDict"): EasyDict,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in ALLOWED and torch.nn module classes (as stand-ins); anything else is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if module.startswith("torch.nn.modules.") and name.isidentifier():
            return torch_module_stub(module, name)
        raise pickle.UnpicklingError(f"unknown global {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed (this is not a plain pickle of a network)")


def read_pickle(path: Path):
    """The pickle's objects, with every network and module as a Stub. Refusals name what they refused."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as err:
        raise ConfigError(f"{path}: refused: {err}; nothing in it was run") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, RuntimeError) as err:
        raise ConfigError(f"{path} is not a whole network pickle (truncated or corrupt): {type(err).__name__}: {err}") from None


def collect_tensors(stub: Stub, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a module record: its parameters and persistent buffers, then its children's, by name."""
    state = stub.state
    skipped = set(state.get("_non_persistent_buffers_set") or ())
    tensors = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or name in skipped:
                continue
            if not isinstance(value, torch.Tensor):
                raise ConfigError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
            tensors[f"{prefix}{name}"] = value.detach().contiguous()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, Stub):
            raise ConfigError(f"{prefix}{name} is a {type(child).__name__}, not a module")
        tensors |= collect_tensors(child, f"{prefix}{name}.")
    return tensors


def network_tensors(net: Stub) -> dict[str, torch.Tensor]:
    """The wrapper's tensors named as EDMDenoiser's: EDM2's `unet.` as `model.`, its uncertainty head left out."""
    tensors = collect_tensors(net)
    if net.class_name != "Precond":
        return tensors
    return {("model." + k.removeprefix("unet.")): v for k, v in tensors.items() if not k.startswith(EDM2_UNUSED)}


def plain(value):
    """Constructor arguments as JSON values (tuples as lists, numpy scalars as numbers)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"a constructor argument is a {type(value).__name__}, which a converted config cannot hold")


def network_of(data, path: Path) -> Stub:
    """The EMA network of an NVlabs snapshot dict (or a pickled network itself)."""
    encoder = data.get("encoder") if isinstance(data, dict) else None
    if isinstance(encoder, Stub) and encoder.class_name in LATENT_ENCODERS:
        raise ConfigError(f"{path} is a latent EDM2 network (its encoder is {encoder.class_name}, Stable Diffusion's VAE); "
                          "only pixel networks (EDM, EDM2 img64) are supported")
    net = data.get(NETWORK_KEY) if isinstance(data, dict) else data
    if not isinstance(net, Stub):
        keys = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{path} holds no network: no '{NETWORK_KEY}' entry (it has: {keys or 'nothing'})")
    if net.class_name in REFUSED_PRECONDS:
        raise ConfigError(f"{path}: {net.class_name}: {REFUSED_PRECONDS[net.class_name]}")
    if net.class_name not in PRECOND_CLASSES:
        raise ConfigError(f"{path}: '{NETWORK_KEY}' is a {net.class_name}, not a preconditioned network "
                          f"({', '.join(PRECOND_CLASSES)})")
    return net


def denoiser_config(net: Stub, path: Path) -> dict:
    """EDMDenoiser's config from the recorded constructor arguments of the preconditioning wrapper."""
    from teachers.edm import network_sigma_range

    kwargs = plain(dict(net.state.get("_init_kwargs") or {}))
    if net.state.get("_init_args"):
        raise ConfigError(f"{path}: the network was built with positional arguments, which the conversion cannot name")
    missing = [k for k in ("img_resolution", "img_channels") if k not in kwargs]
    if missing:
        raise ConfigError(f"{path}: the network's recorded constructor arguments lack {', '.join(missing)}")
    precond = PRECOND_CLASSES[net.class_name]
    model_type = EDM2_NETWORK if net.class_name == "Precond" else kwargs.get("model_type", "DhariwalUNet" if precond == "edm" else "SongUNet")
    if model_type not in (*NETWORK_CLASSES, EDM2_NETWORK):
        raise ConfigError(f"{path}: model_type={model_type}; supported: {', '.join(NETWORK_CLASSES)}")
    vp = {k: kwargs[k] for k in ("beta_d", "beta_min", "epsilon_t") if k in kwargs}
    low, high = network_sigma_range(precond, kwargs.get("sigma_max"), kwargs.get("sigma_min"), **vp)
    config = {"model_type": model_type, "img_resolution": kwargs["img_resolution"], "img_channels": kwargs["img_channels"],
              "label_dim": kwargs.get("label_dim", 0), "precond": precond, "sigma_data": kwargs.get("sigma_data", 0.5),
              "sigma_min": low, "sigma_max": high, "model_kwargs": {k: v for k, v in kwargs.items() if k not in INIT_KEYS},
              "source": Path(path).name}
    return config | {k: kwargs[k] for k in ("beta_d", "beta_min", "M") if k in kwargs}


def convert(pickle_path: Path, out_dir: Path) -> Path:
    """Read the pickle without running it and write OUT_DIR (config.json + safetensors), atomically."""
    from teachers.edm import EDMDenoiser
    from teachers.io import save_pretrained_atomic

    pickle_path, out_dir = Path(pickle_path), Path(out_dir)
    check_output(out_dir)
    if not pickle_path.is_file():
        raise ConfigError(f"PICKLE={pickle_path}: no such file")
    net = network_of(read_pickle(pickle_path), pickle_path)
    config = denoiser_config(net, pickle_path)
    tensors = network_tensors(net)
    model = EDMDenoiser(**config)
    result = model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        some = lambda keys: ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")  # noqa: E731
        raise ConfigError(f"{pickle_path}: the tensors do not fit a {config['model_type']} with its recorded arguments "
                          f"(missing: {some(result.missing_keys) or 'none'}; unexpected: {some(result.unexpected_keys) or 'none'})")
    return save_pretrained_atomic(model, out_dir)


def check_output(out_dir: Path) -> None:
    """OUT_DIR is new, empty, or an earlier conversion (replaced); anything else is refused before any work."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"OUT_DIR={out_dir} is a file")
    from teachers.families import folder_class

    try:
        converted = folder_class(out_dir) == "EDMDenoiser"
    except ConfigError:  # an unreadable config.json: not a conversion of ours
        converted = False
    if any(out_dir.iterdir()) and not converted:
        raise ConfigError(f"OUT_DIR={out_dir} exists and is not a converted network; give a new folder")


def main(argv: list[str] | None = None) -> Path:
    """Console entry point (`distill-convert`); bad input is one `error:` line and exit 2, nothing written."""
    parser = argparse.ArgumentParser(prog="distill-convert", description=__doc__.splitlines()[0])
    parser.add_argument("pickle", type=Path, help="an NVlabs EDM network pickle (edm-*.pkl or a training snapshot)")
    parser.add_argument("out_dir", type=Path, help="the folder to write (new, or an earlier conversion)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.pickle, args.out_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    config = json.loads((out / "config.json").read_text())
    print(f"wrote {out}: {config['model_type']} under {config['precond']} preconditioning, {config['img_channels']}x"
          f"{config['img_resolution']}x{config['img_resolution']}, {config['label_dim'] or 'no'} classes, sigma in "
          f"[{config['sigma_min']:.4g}, {config['sigma_max']:.4g}]; load it with teachers.load('{out}') or teacher=edm "
          f"teacher.path={out}")
    return out


if __name__ == "__main__":
    main()
