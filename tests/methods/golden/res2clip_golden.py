"""Res2CLIP outputs on the tiny random backbone, for the bit-identity regression test.

``compute()`` runs Res2CLIP training-free and fine-tuned (paper and official-code presets,
every adapter family perturbed away from the identity), its losses in both phases, and
three alternating Adam steps, and returns every output as a named tensor.
``python tests/methods/golden/res2clip_golden.py OUT.safetensors`` writes them.

The stored file ``res2clip_golden.safetensors`` was produced by this script at commit
b04bfa3 (before the method interface refactor), in a process pinned to portable kernels
(:data:`PINNED_ENV`: one thread, ATen's default CPU capability, MKL's compatible code
path, oneDNN capped at SSE4.1), so that it does not depend on the CPU's vector units.
"""

from __future__ import annotations

import sys

import torch

PINNED_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "DNNL_MAX_CPU_ISA": "SSE41",
}
SIZE = 48


def _perturb(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def compute() -> dict[str, torch.Tensor]:
    """Every golden output, keyed ``<preset>/<mode>/<what>``."""
    from resad_kit.clip import ClipBackbone
    from resad_kit.methods import Res2CLIP, Res2CLIPConfig, TrainingBatch

    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    backbone = ClipBackbone.tiny(seed=0, image_size=SIZE)
    g = torch.Generator().manual_seed(0)
    refs = torch.randn(2, 3, SIZE, SIZE, generator=g)
    queries = torch.randn(2, 3, SIZE, SIZE, generator=g)
    train_q = backbone(torch.randn(4, 3, SIZE, SIZE, generator=g))
    train_r = backbone(torch.randn(4, 3, SIZE, SIZE, generator=g))
    masks = torch.zeros(4, SIZE, SIZE)
    masks[2:, 8:24, 16:40] = 1
    batch = TrainingBatch(train_q, train_r, masks)
    ref_feats, query_feats = backbone(refs), backbone(queries)

    out: dict[str, torch.Tensor] = {}
    for preset in ("paper", "official_code"):
        for mode in ("training_free", "fine_tuned"):
            key = f"{preset}/{mode}"
            config = getattr(Res2CLIPConfig, preset)(mode)
            torch.manual_seed(1)  # the adapters' initialisation
            model = Res2CLIP(backbone, config)
            if model.adapters is not None:
                _perturb(model.adapters, seed=1)
            pred = model.fit_references(ref_feats)(query_feats)
            out[f"{key}/image_score"] = pred.image_score
            out[f"{key}/anomaly_map"] = pred.anomaly_map
            for name, branch in pred.branches.items():
                out[f"{key}/{name}/map"] = branch.map
                out[f"{key}/{name}/score"] = branch.score
            if model.adapters is None:
                continue
            for phase in ("visual", "text"):
                for name, value in model.losses(batch, phase).items():
                    out[f"{key}/loss/{phase}/{name}"] = value.detach()
            params = [p for p in model.adapters.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999))
            for step, phase in enumerate(("visual", "text", "visual")):
                opt.zero_grad(set_to_none=True)
                loss = model.losses(batch, phase)["total"]
                loss.backward()
                opt.step()
                out[f"{key}/step{step}/loss"] = loss.detach()
            trained = model.fit_references(ref_feats)(query_feats)
            out[f"{key}/trained/anomaly_map"] = trained.anomaly_map
            out[f"{key}/trained/image_score"] = trained.image_score
            for name, p in model.adapters.state_dict().items():
                out[f"{key}/trained/params/{name}"] = p
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


if __name__ == "__main__":
    from safetensors.torch import save_file

    save_file(compute(), sys.argv[1])
