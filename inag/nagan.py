"""NAGAN: a conditional GAN from normalized performance to quantized architectures.

Three networks (paper section 3, Algorithm 1):

- the **encoder** E, a surrogate regression from an encoded architecture to its normalized
  performance c = (p - p_min) / P_R, trained first on the dataset and then frozen;
- the **generator** G(z, c), Gaussian noise z and a continuous condition c in [0, 1] to an
  encoded architecture;
- the **discriminator** D with two heads, real/fake and a reconstruction of the condition
  (ACGAN); its first layers may start from the encoder's (the paper's suggestion).

The generator is taught by three terms: fool D, make D's condition head read c back, and make
the frozen encoder read c back (the paper's V(E)).

Discrete choices: G emits sigmoid values in [0, 1]^d, which are snapped in the forward pass to
the canonical encoding of the architecture they decode to (``space.decode`` then ``encode``),
with a straight-through gradient. D and E therefore only ever see valid, canonical
architectures — the same points they see from the dataset — and every generated vector
decodes to a valid architecture of the space (see docs/nagan.md for the measured alternatives).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inag.arch import ArchSpec
from inag.space import SearchSpace, space_from_dict

ARTIFACT_FORMAT = "inag-nagan-v1"


class ModelError(ValueError):
    """A NAGAN artifact is missing, corrupt, tampered with, or does not fit the request."""


@dataclass(frozen=True)
class NaganConfig:
    """Hyper-parameters of encoder and GAN training (defaults: 2000 rows in minutes on 2 CPUs)."""

    seed: int = 0
    val_fraction: float = 0.1
    enc_hidden: int = 256
    enc_epochs: int = 300
    enc_lr: float = 2e-3
    enc_batch: int = 128
    enc_weight_decay: float = 1e-5
    latent_dim: int = 16
    g_hidden: int = 128
    d_hidden: int = 256
    gan_steps: int = 3000
    gan_batch: int = 128
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    lambda_cond: float = 1.0  # ACGAN condition-reconstruction weight
    lambda_enc: float = 2.0  # V(E): the frozen encoder teaches the generator
    lambda_ms: float = 1.0  # mode seeking (Mao et al. 2019): different z, different archs
    real_label: float = 0.9  # one-sided label smoothing keeps D from winning outright
    init_d_from_encoder: bool = True


# ---------------------------------------------------------------------------- networks
def _mlp(sizes: Sequence[int], act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])


class Encoder(nn.Module):
    """Surrogate: encoded architecture -> normalized performance."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.trunk = _mlp([dim, hidden, hidden], nn.SiLU)
        self.act = nn.SiLU()
        self.head = _mlp([hidden, hidden // 2, 1], nn.SiLU)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(-1)


class Generator(nn.Module):
    def __init__(self, latent: int, dim: int, hidden: int):
        super().__init__()
        self.net = _mlp([latent + 1, hidden, hidden, hidden, dim], nn.SiLU)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(torch.cat([z, c.unsqueeze(-1)], dim=-1)))


class Discriminator(nn.Module):
    """Shared trunk (same shape as the encoder's), real/fake head, condition head."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.trunk = _mlp([dim, hidden, hidden], nn.SiLU)
        self.act = nn.SiLU()
        self.real = _mlp([hidden, hidden // 2, 1], nn.SiLU)
        self.cond = _mlp([hidden, hidden // 2, 1], nn.SiLU)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.act(self.trunk(x))
        return self.real(h).squeeze(-1), torch.sigmoid(self.cond(h)).squeeze(-1)


# ---------------------------------------------------------------------------- snapping
class Snapper:
    """Snap generator outputs to canonical encodings of the architectures they decode to."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def archs(self, x: np.ndarray) -> list[ArchSpec]:
        return self.space.decode_many(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            canon = torch.from_numpy(self.space.canonical_many(x.detach().numpy()))
        return x + (canon - x).detach()


# ---------------------------------------------------------------------------- the model
@dataclass
class Nagan:
    """A trained encoder + generator (+ discriminator) with everything needed to use them."""

    space: SearchSpace
    task: str
    task_kind: str
    p_min: float
    p_range: float
    config: NaganConfig
    encoder: Encoder
    generator: Generator
    discriminator: Discriminator
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ conditions
    def normalize(self, perf: float | np.ndarray) -> Any:
        return (np.asarray(perf, dtype=np.float64) - self.p_min) / self.p_range

    def denormalize(self, c: float | np.ndarray) -> Any:
        return np.asarray(c, dtype=np.float64) * self.p_range + self.p_min

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def estimate(self, archs: Sequence[ArchSpec]) -> np.ndarray:
        """Encoder estimate of the normalized performance (c units) of ``archs``."""
        if not archs:
            return np.zeros(0)
        x = torch.from_numpy(self.space.encode_many(archs))
        self.encoder.eval()
        return self.encoder(x).numpy().astype(np.float64)

    @torch.no_grad()
    def estimate_encoded(self, x: np.ndarray) -> np.ndarray:
        """Encoder estimate for canonical encodings (no ArchSpec objects needed)."""
        self.encoder.eval()
        return (
            self.encoder(torch.from_numpy(np.asarray(x, dtype=np.float32)))
            .numpy()
            .astype(np.float64)
        )

    @torch.no_grad()
    def generate_encoded(self, condition: float, n: int, seed: int = 0) -> np.ndarray:
        """Canonical encodings of a bag of ``n`` generated architectures (with repeats)."""
        if not math.isfinite(condition):
            raise ModelError(f"condition must be a finite number, found {condition}")
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.config.latent_dim, generator=gen)
        c = torch.full((n,), float(condition))
        self.generator.eval()
        return self.space.canonical_many(self.generator(z, c).numpy())

    def generate(self, condition: float, n: int, seed: int = 0) -> list[ArchSpec]:
        """A bag of ``n`` architectures for normalized condition ``condition``."""
        return self.space.decode_many(self.generate_encoded(condition, n, seed))

    def generate_unique(
        self, condition: float, n: int, seed: int = 0
    ) -> tuple[list[ArchSpec], np.ndarray, np.ndarray]:
        """Distinct architectures of a bag of ``n`` (in canonical-encoding order), how often
        each was generated, and their encodings."""
        enc = np.ascontiguousarray(self.generate_encoded(condition, n, seed))
        rows = enc.view(np.dtype((np.void, enc.dtype.itemsize * enc.shape[1]))).ravel()
        _, first, counts = np.unique(rows, return_index=True, return_counts=True)
        uniq = enc[first]
        return self.space.decode_many(uniq), counts, uniq

    def dist_f(self, archs: Sequence[ArchSpec], condition: float) -> np.ndarray:
        """Paper eq. 1 with the encoder: |Test_f(m) - c| in normalized units."""
        return np.abs(self.estimate(archs) - condition)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        tensors = {}
        for name, mod in (
            ("encoder", self.encoder),
            ("generator", self.generator),
            ("discriminator", self.discriminator),
        ):
            for k, v in mod.state_dict().items():
                tensors[f"{name}.{k}"] = v.detach().contiguous().clone()
        meta = {
            "format": ARTIFACT_FORMAT,
            "space": json.dumps(self.space.to_dict(), sort_keys=True),
            "task": self.task,
            "task_kind": self.task_kind,
            "p_min": repr(float(self.p_min)),
            "p_range": repr(float(self.p_range)),
            "config": json.dumps(asdict(self.config), sort_keys=True),
            "info": json.dumps(self.meta, sort_keys=True),
            "content_sha256": _content_hash(tensors),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @staticmethod
    def load(path: str | Path, expect_space: SearchSpace | None = None) -> Nagan:
        """Load and verify an artifact (format, integrity hash, shapes, optional space)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"no NAGAN artifact at {path} (train one with `inag train`)")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(
                f"{path} is not a readable NAGAN artifact (truncated or corrupt: {exc})"
            ) from None
        if meta.get("format") != ARTIFACT_FORMAT:
            raise ModelError(
                f"{path}: format {meta.get('format')!r}, expected "
                f"{ARTIFACT_FORMAT!r} (not a NAGAN artifact, or another version)"
            )
        if meta.get("content_sha256") != _content_hash(tensors):
            raise ModelError(
                f"{path}: weights do not match the recorded content hash "
                "(the file was modified after it was written)"
            )
        try:
            space = space_from_dict(json.loads(meta["space"]), source=f"{path} (space)")
            config = NaganConfig(**json.loads(meta["config"]))
            p_min, p_range = float(meta["p_min"]), float(meta["p_range"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{path}: metadata is incomplete or invalid: {exc}") from None
        if expect_space is not None and space.to_dict() != expect_space.to_dict():
            raise ModelError(
                f"{path} was trained on space {space.name!r} ({space.kind}, input "
                f"{space.input_shape}, output {space.output_size}, encoding {space.dim}); "
                f"the request is for {expect_space.name!r} ({expect_space.kind}, input "
                f"{expect_space.input_shape}, output {expect_space.output_size}, encoding "
                f"{expect_space.dim})"
            )
        model = _build(space, config)
        for name, mod in (
            ("encoder", model[0]),
            ("generator", model[1]),
            ("discriminator", model[2]),
        ):
            sd = {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(name + ".")}
            try:
                mod.load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                raise ModelError(
                    f"{path}: {name} weights do not fit its space/config: "
                    f"{str(exc).splitlines()[0]}"
                ) from None
        return Nagan(
            space,
            meta.get("task", "?"),
            meta.get("task_kind", "?"),
            p_min,
            p_range,
            config,
            *model,
            meta=json.loads(meta.get("info", "{}")),
        )


def _content_hash(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _build(space: SearchSpace, cfg: NaganConfig) -> tuple[Encoder, Generator, Discriminator]:
    return (
        Encoder(space.dim, cfg.enc_hidden),
        Generator(cfg.latent_dim, space.dim, cfg.g_hidden),
        Discriminator(space.dim, cfg.d_hidden),
    )


# ---------------------------------------------------------------------------- training
@dataclass(frozen=True)
class EncoderReport:
    r2: float
    kendall_tau: float
    n_train: int
    n_val: int
    seconds: float


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def r2_score(y: np.ndarray, p: np.ndarray) -> float:
    ss = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - p) ** 2).sum()) / ss if ss > 0 else 0.0


def train_encoder(
    encoder: Encoder,
    x: np.ndarray,
    c: np.ndarray,
    cfg: NaganConfig,
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
) -> EncoderReport:
    """Regression on a seeded train/held-out split; keeps the best held-out epoch."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(x))
    n_val = max(1, int(round(cfg.val_fraction * len(x))))
    val, tr = perm[:n_val], perm[n_val:]
    xt, ct = torch.from_numpy(x[tr]), torch.from_numpy(c[tr]).float()
    xv, cv = torch.from_numpy(x[val]), c[val]
    opt = torch.optim.AdamW(encoder.parameters(), lr=cfg.enc_lr, weight_decay=cfg.enc_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.enc_epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    best = (-math.inf, None)
    for epoch in range(cfg.enc_epochs):
        encoder.train()
        order = torch.randperm(len(xt), generator=gen)
        for s in range(0, len(xt), cfg.enc_batch):
            idx = order[s : s + cfg.enc_batch]
            loss = ((encoder(xt[idx]) - ct[idx]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        encoder.eval()
        with torch.no_grad():
            pv = encoder(xv).numpy()
        r2 = r2_score(cv, pv)
        if r2 > best[0]:
            best = (r2, {k: v.clone() for k, v in encoder.state_dict().items()})
        if progress:
            progress("encoder", epoch + 1, cfg.enc_epochs, {"loss": float(loss), "val_r2": r2})
    assert best[1] is not None
    encoder.load_state_dict(best[1])
    encoder.eval()
    with torch.no_grad():
        pv = encoder(xv).numpy()
    return EncoderReport(
        r2_score(cv, pv), kendall_tau(cv, pv), len(tr), len(val), time.perf_counter() - t0
    )


def train_gan(
    space: SearchSpace,
    encoder: Encoder,
    x: np.ndarray,
    c: np.ndarray,
    cfg: NaganConfig,
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
) -> tuple[Generator, Discriminator, dict[str, float]]:
    """Algorithm 1: alternate D (ascent) and G (descent) updates; the frozen E teaches G."""
    torch.manual_seed(cfg.seed)
    gen_rng = torch.Generator().manual_seed(cfg.seed + 1)
    G = Generator(cfg.latent_dim, space.dim, cfg.g_hidden)
    D = Discriminator(space.dim, cfg.d_hidden)
    if cfg.init_d_from_encoder:
        D.trunk.load_state_dict(encoder.trunk.state_dict())
    for p in encoder.parameters():
        p.requires_grad_(False)
    encoder.eval()
    snap = Snapper(space)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.g_lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    xr_all, cr_all = torch.from_numpy(x), torch.from_numpy(c).float()
    m = cfg.gan_batch
    stats: dict[str, float] = {}
    for step in range(cfg.gan_steps):
        idx = torch.randint(0, len(xr_all), (m,), generator=gen_rng)
        xr, cr = xr_all[idx], cr_all[idx]
        # --- discriminator: real/fake + condition reconstruction of real data
        z = torch.randn(m, cfg.latent_dim, generator=gen_rng)
        cg = torch.rand(m, generator=gen_rng)
        with torch.no_grad():
            xf = snap(G(z, cg))
        lr_, cr_hat = D(xr)
        lf_, _ = D(xf)
        loss_d = (
            bce(lr_, torch.ones(m))
            + bce(lf_, torch.zeros(m))
            + cfg.lambda_cond * ((cr_hat - cr) ** 2).mean()
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # --- generator: fool D, condition read back by D and by the frozen encoder (V(E))
        z = torch.randn(m, cfg.latent_dim, generator=gen_rng)
        cg = torch.rand(m, generator=gen_rng)
        raw = G(z, cg)
        xf = snap(raw)
        lf, cf_hat = D(xf)
        enc = encoder(xf)
        loss_adv = bce(lf, torch.ones(m))
        loss_cond = ((cf_hat - cg) ** 2).mean()
        loss_enc = ((enc - cg) ** 2).mean()
        # mode seeking: pairs of noise vectors at the same condition should differ in output
        half = m // 2
        dz = (z[:half] - z[half : 2 * half]).abs().mean(dim=1)
        dx = (raw[:half] - G(z[half : 2 * half], cg[:half])).abs().mean(dim=1)
        loss_ms = 1.0 / ((dx / dz).mean() + 1e-5)
        loss_g = (
            loss_adv
            + cfg.lambda_cond * loss_cond
            + cfg.lambda_enc * loss_enc
            + cfg.lambda_ms * loss_ms
        )
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        stats = {
            "loss_d": float(loss_d),
            "loss_g": float(loss_g),
            "enc_mae": float((enc - cg).abs().mean()),
        }
        if progress and (step + 1) % 50 == 0:
            progress("gan", step + 1, cfg.gan_steps, stats)
    for p in encoder.parameters():
        p.requires_grad_(True)
    return G, D, stats


def dataset_hash(archs: Sequence[ArchSpec], perf: np.ndarray) -> str:
    h = hashlib.sha256()
    for a, p in zip(archs, perf, strict=True):
        h.update(f"{a.arch_id}:{p:.9g};".encode())
    return h.hexdigest()[:16]


def fit_nagan(
    space: SearchSpace,
    archs: Sequence[ArchSpec],
    perf: np.ndarray,
    task: str,
    task_kind: str,
    cfg: NaganConfig,
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
    info: dict[str, Any] | None = None,
) -> tuple[Nagan, EncoderReport]:
    """Train encoder then NAGAN on (architecture, performance) rows."""
    if len(archs) < 20:
        raise ModelError(f"need at least 20 trained architectures, found {len(archs)}")
    p_min, p_max = float(np.min(perf)), float(np.max(perf))
    if not p_max > p_min:
        raise ModelError(f"all {len(perf)} performances equal {p_min}: nothing to condition on")
    p_range = p_max - p_min
    c = ((perf - p_min) / p_range).astype(np.float32)
    x = space.encode_many(archs).astype(np.float32)
    torch.manual_seed(cfg.seed)
    enc = Encoder(space.dim, cfg.enc_hidden)
    report = train_encoder(enc, x, c, cfg, progress)
    t0 = time.perf_counter()
    G, D, stats = train_gan(space, enc, x, c, cfg, progress)
    from inag.dataset import library_versions

    meta = {
        "dataset_hash": dataset_hash(archs, perf),
        "dataset_size": len(archs),
        "encoder": asdict(report),
        "gan_seconds": time.perf_counter() - t0,
        "gan_final": stats,
        "versions": library_versions(),
        **(info or {}),
    }
    return Nagan(space, task, task_kind, p_min, p_range, cfg, enc, G, D, meta), report
