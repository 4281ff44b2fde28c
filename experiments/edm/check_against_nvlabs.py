"""Checks the toolkit's EDM networks and `distill-convert` against NVlabs' own code (a clone of github.com/NVlabs/edm
or github.com/NVlabs/edm2 that you give; its CC BY-NC-SA code is imported from there, never copied here).

    python experiments/edm/check_against_nvlabs.py /path/to/NVlabs/edm    # writes experiments/edm/nvlabs_check_edm.json
    python experiments/edm/check_against_nvlabs.py /path/to/NVlabs/edm2   # writes experiments/edm/nvlabs_check_edm2.json

For each architecture and preconditioning, it builds NVlabs' network with random weights (perturbed so no layer is
zero), pickles it as NVlabs' training loop does (torch_utils.persistence), converts the pickle with the toolkit, and
compares D(x, sigma, labels) at six sigmas with and without labels. It also counts the parameters of the papers' real
configurations on both sides (EDM: DDPM++ CIFAR-10 about 56M, ADM ImageNet-64 about 296M; EDM2: img64-S about 280M).
"""
from __future__ import annotations

import argparse
import copy
import json
import pickle
import sys
import tempfile
from pathlib import Path

import torch

import teachers
from teachers.convert import convert
from teachers.edm import EDMDenoiser

TINY = dict(img_resolution=16, img_channels=3)
SONG = dict(model_type="SongUNet", model_channels=16, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[8], dropout=0.13, augment_dim=9)
DDPMPP = dict(embedding_type="positional", encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1])
NCSNPP = dict(embedding_type="fourier", encoder_type="residual", decoder_type="standard", channel_mult_noise=2, resample_filter=[1, 3, 3, 1])
ADM = dict(model_type="DhariwalUNet", model_channels=32, channel_mult=[1, 2, 3], num_blocks=2, attn_resolutions=[8, 4], dropout=0.1)
CASES = {  # name: (NVlabs' preconditioning class, constructor arguments)
    "ddpmpp-vp-cond": ("VPPrecond", dict(TINY, label_dim=10, **SONG, **DDPMPP)),
    "ddpmpp-edm-cond": ("EDMPrecond", dict(TINY, label_dim=10, **SONG, **DDPMPP)),
    "ncsnpp-ve-uncond": ("VEPrecond", dict(TINY, label_dim=0, **SONG, **NCSNPP)),
    "ncsnpp-skip-ve": ("VEPrecond", dict(TINY, label_dim=0, **SONG, **(NCSNPP | {"encoder_type": "skip", "decoder_type": "skip"}))),
    "adm-edm-cond": ("EDMPrecond", dict(TINY, label_dim=10, **ADM)),
}
EDM2_CASES = {"edm2-cond": ("Precond", dict(TINY, label_dim=10, model_channels=32, channel_mult=[1, 2], num_blocks=1,
                                             attn_resolutions=[8], dropout=0.1, use_fp16=False)),
              "edm2-uncond": ("Precond", dict(TINY, label_dim=0, model_channels=32, channel_mult=[1, 2, 2], num_blocks=2,
                                              attn_resolutions=[8, 4], use_fp16=False))}
EDM2_REAL = {"edm2-img64-s": ("Precond", dict(img_resolution=64, img_channels=3, label_dim=1000, model_channels=192, dropout=0.0))}
REAL = {  # the released networks' configurations (NVlabs' train.py): name -> (preconditioning, arguments)
    "edm-cifar10-32x32-cond (DDPM++)": ("EDMPrecond", dict(img_resolution=32, img_channels=3, label_dim=10, model_type="SongUNet",
                                        augment_dim=9, dropout=0.13, model_channels=128, channel_mult=[2, 2, 2], **DDPMPP)),
    "edm-imagenet-64x64-cond-adm (ADM)": ("EDMPrecond", dict(img_resolution=64, img_channels=3, label_dim=1000, model_type="DhariwalUNet",
                                          model_channels=192, channel_mult=[1, 2, 3, 4], dropout=0.1)),
}
SIGMAS = (0.002, 0.05, 0.5, 2.0, 20.0, 80.0)


def relative_error(reference, net, x, labels, label_dim) -> float:
    worst = 0.0
    for sigma in SIGMAS:
        s = torch.full((x.shape[0],), sigma)
        for lab in ([None, labels] if label_dim else [None]):
            with torch.no_grad():
                want = reference(x * (1 + sigma), s, None if lab is None else torch.nn.functional.one_hot(lab, label_dim).float())
                got = net(x * (1 + sigma), s, lab)
            worst = max(worst, ((got - want).abs().max() / want.abs().max()).item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nvlabs_edm", type=Path, help="a clone of github.com/NVlabs/edm or github.com/NVlabs/edm2")
    parser.add_argument("--out", type=Path, default=None, help="default: nvlabs_check_edm.json / nvlabs_check_edm2.json here")
    args = parser.parse_args()
    sys.path.insert(0, str(args.nvlabs_edm))
    edm2 = (args.nvlabs_edm / "training" / "networks_edm2.py").is_file()
    if edm2:
        from training import networks_edm2 as networks  # NVlabs' code, from the clone given
    else:
        from training import networks
    cases, real = (EDM2_CASES, EDM2_REAL) if edm2 else (CASES, REAL)
    out = args.out or Path(__file__).with_name(f"nvlabs_check_{'edm2' if edm2 else 'edm'}.json")

    torch.manual_seed(0)
    results = {"outputs": {}, "parameters": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (precond, kwargs) in cases.items():
            reference = getattr(networks, precond)(**kwargs).eval()
            with torch.no_grad():
                for p in reference.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
            path = Path(tmp) / f"{name}.pkl"
            with open(path, "wb") as f:  # as NVlabs' training loop writes a snapshot
                pickle.dump(dict(ema=copy.deepcopy(reference).requires_grad_(False), loss_fn=None, augment_pipe=None), f)
            net = teachers.load(convert(path, Path(tmp) / name))
            x, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 3, 7, 9])
            results["outputs"][name] = {"max_relative_error": relative_error(reference, net, x, labels, kwargs["label_dim"]),
                                        "sigmas": list(SIGMAS), "with_labels": bool(kwargs["label_dim"])}
    for name, (precond, kwargs) in real.items():
        reference = getattr(networks, precond)(**kwargs)
        model_kwargs = {k: v for k, v in kwargs.items() if k not in ("img_resolution", "img_channels", "label_dim", "model_type", "use_fp16")}
        ours = EDMDenoiser(model_type=kwargs.get("model_type", "EDM2UNet"), img_resolution=kwargs["img_resolution"],
                           label_dim=kwargs["label_dim"], model_kwargs=model_kwargs)
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        names = sorted(k.replace("unet.", "model.", 1) for k in reference.state_dict() if not k.startswith("logvar_"))
        count_ref = sum(v.numel() for k, v in reference.named_parameters() if not k.startswith("logvar_"))
        results["parameters"][name] = {"nvlabs": count_ref, "toolkit": count(ours), "same_names": names == sorted(ours.state_dict())}
    out.write_text(json.dumps(results, indent=2) + "\n")
    for name, entry in results["outputs"].items():
        print(f"{name:18s} max relative error {entry['max_relative_error']:.2e} over sigma {SIGMAS}")
    for name, entry in results["parameters"].items():
        print(f"{name}: {entry['toolkit']:,} parameters (NVlabs {entry['nvlabs']:,}), same state-dict names: {entry['same_names']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
