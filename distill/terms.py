"""Loss terms: each a small object built from the config by hydra (`_target_`), with its weight, what it needs from the
run, and a per-sample value (the mean over a sample's elements). The student step sums its terms (`loss.student`), the
fake-score step its own (`loss.fake`): weight x batch mean of each term's value.

    loss.student.dmd   DMD's distribution matching (Yin et al. 2024, eq. 8)
    loss.student.sid   Score identity Distillation (Zhou et al. 2024)
    loss.student.regression      regression on teacher ODE pairs (DMD eq. 9)
    loss.student.gan_generator   DMD2's (and SiDA's) generator loss on the critic's logits
    loss.fake.denoising          the fake score's denoising loss on student samples
    loss.fake.gan_discriminator  the classifier loss on the fake score's features (DMD2 sec. 4.3, SiDA)

This module imports no torch at load time: the entry point's config check builds the terms (and so checks their
settings) before the heavy imports; their math lives in distill.losses and distill.gan.
"""
from __future__ import annotations

import logging
import math
import pkgutil
from dataclasses import astuple, dataclass, fields
from typing import ClassVar

from teachers.checks import LOSS_WEIGHTINGS, is_number
from teachers.errors import ConfigError

log = logging.getLogger(__name__)

REGRESSION_DISTANCES = ("l2", "pseudo_huber")
SID_ALPHA_RANGE = (0.0, 1.5)  # SiD runs alpha = 1 and 1.2 (its default); past 1.5 the -(alpha - 1)||d||^2 term dominates


@dataclass(frozen=True)
class Needs:
    """What a term needs the run to build and the step to compute."""

    samples: bool = False  # student samples G(z, cond) of the step's batch
    fake: bool = False  # the fake score D_fake (then it trains, on loss.fake)
    pairs: bool = False  # teacher ODE pairs (z_ref, y_ref)
    critic: bool = False  # the GAN head on D_fake's features, and real images for it
    through_scores: bool = False  # gradients through the scores' inputs into G (not into the scores' weights)


@dataclass(frozen=True)
class Term:
    """A weighted loss term; `side` says which step sums it (student or fake)."""

    weight: float = 1.0
    side: ClassVar[str] = "student"
    needs: ClassVar[Needs] = Needs()

    def __post_init__(self):
        if not (is_number(self.weight) and math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError(f"weight={self.weight!r}; it must be a number >= 0 (0 leaves the term out)")


@dataclass(frozen=True)
class DMD(Term):
    """Distribution matching (DMD eq. 8): the KL gradient (x0_fake - x0_real) / mean|x - x0_real| at x noised to a
    sigma of loss.sigma, both scores read without gradients."""

    needs: ClassVar[Needs] = Needs(samples=True, fake=True)

    def __call__(self, s) -> object:
        from distill import losses

        x_t, sigma = s.noised(s.x.detach())
        x0_real, x0_fake = s.scores(x_t, sigma, grad=False)
        return losses.dmd_loss(s.x, losses.dmd_gradient(s.x.detach(), x0_real, x0_fake))


@dataclass(frozen=True)
class SiD(Term):
    """Score identity Distillation (Zhou et al. 2024): the Fisher divergence between the teacher's and the student's
    scores through the fake score, with gradients through both scores' inputs into G; alpha weighs its two parts."""

    alpha: float = 1.2
    needs: ClassVar[Needs] = Needs(samples=True, fake=True, through_scores=True)

    def __post_init__(self):
        super().__post_init__()
        low, high = SID_ALPHA_RANGE
        if not (is_number(self.alpha) and low <= self.alpha <= high):
            raise ConfigError(f"alpha={self.alpha!r}; SiD's alpha must be a number in [{low}, {high}] (the paper's default: 1.2)")

    def __call__(self, s) -> object:
        from distill import losses

        x_t, sigma = s.noised(s.x)  # gradients flow through x_t into G, as in SiD's generator loss
        x0_real, x0_fake = s.scores(x_t, sigma, grad=True)
        return losses.sid_loss(s.x, x0_real, x0_fake, self.alpha)


@dataclass(frozen=True)
class Regression(Term):
    """Regression of G(z_ref) on the teacher's ODE output y_ref (DMD eq. 9, pixel or latent form)."""

    distance: str = "l2"
    pseudo_huber_c: float = 0.03
    needs: ClassVar[Needs] = Needs(pairs=True)

    def __post_init__(self):
        super().__post_init__()
        if self.distance not in REGRESSION_DISTANCES:
            raise ConfigError(f"distance={self.distance!r}; allowed: {', '.join(REGRESSION_DISTANCES)}")
        if not (is_number(self.pseudo_huber_c) and self.pseudo_huber_c > 0):
            raise ConfigError(f"pseudo_huber_c={self.pseudo_huber_c!r}; it must be a number > 0")

    def __call__(self, s) -> object:
        from distill import losses

        return losses.regression_loss(s.x_ref, s.y_ref, self.distance, self.pseudo_huber_c)


@dataclass(frozen=True)
class GanGenerator(Term):
    """The non-saturating generator loss softplus(-D(G(z))) of the (frozen) critic (DMD2 eq. 5; SiDA's adversarial
    term), on the samples the GAN sees."""

    needs: ClassVar[Needs] = Needs(samples=True, critic=True)

    def __call__(self, s) -> object:
        from distill import gan

        return gan.generator_loss(s.gan_logits())


@dataclass(frozen=True)
class Denoising(Term):
    """The fake score's denoising loss on student samples: w(sigma) mean (D_fake(x_t) - x)^2, weighted by `weighting`
    (auto: the teacher network's own MSE, eps-MSE for an eps UNet as DMD2; edm: EDM's lambda, as SiD)."""

    weighting: str = "auto"
    side: ClassVar[str] = "fake"
    needs: ClassVar[Needs] = Needs(samples=True, fake=True)

    def __post_init__(self):
        super().__post_init__()
        if self.weighting not in ("auto", *LOSS_WEIGHTINGS):
            raise ConfigError(f"weighting={self.weighting!r}; allowed: auto, {', '.join(LOSS_WEIGHTINGS)}")

    def __call__(self, f) -> object:
        from teachers.loss import weighted_denoising_error

        weighting = f.auto_weighting if self.weighting == "auto" else self.weighting
        return weighted_denoising_error(f.x0, f.x, f.sigma, f.sigma_data, weighting)


@dataclass(frozen=True)
class GanDiscriminator(Term):
    """The classifier's non-saturating loss on real and student images, noised (DMD2 sec. 4.3): it trains the head
    and the fake score's backbone. One value per batch (real and student batches may differ in size)."""

    side: ClassVar[str] = "fake"
    needs: ClassVar[Needs] = Needs(critic=True)

    def __call__(self, f) -> object:
        from distill import gan

        return gan.discriminator_loss(f.logits_real, f.logits_fake)


def combined_needs(terms) -> Needs:
    """What a set of terms needs together (a dict name -> term, or an iterable of terms)."""
    values = list(terms.values()) if isinstance(terms, dict) else list(terms)
    return Needs(*(any(flags) for flags in zip(*(astuple(t.needs) for t in values)))) if values else Needs()


def term_class(target, where: str) -> type:
    """The Term class a config node's _target_ names (a dotted path; ours are listed in the error)."""
    ours = ", ".join(f"distill.terms.{c.__name__}" for c in TERMS)
    if not isinstance(target, str):
        raise ConfigError(f"{where} names no term class: give it a _target_ (ours: {ours})")
    try:
        cls = pkgutil.resolve_name(target)  # "package.module.Class", as hydra's _target_ names it
    except (ImportError, AttributeError, ValueError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, Term)):
        raise ConfigError(f"{where}._target_={target} is not a loss term; ours: {ours}")
    return cls


def build_terms(nodes, side: str) -> dict[str, Term]:
    """The terms of loss.<side> (student or fake) with weight > 0, by name, in the config's order; a term's settings
    are checked as it is built (one ConfigError line naming the key)."""
    terms = {}
    for name, node in (nodes or {}).items():
        where = f"loss.{side}.{name}"
        if node is None:  # loss.student.regression=null leaves a term out
            continue
        if "_target_" not in node:  # an experiment's settings for a term this loss group leaves out (loss=sid on mnist)
            log.warning("%s: the loss group has no %s term; its settings (%s) are ignored", where, name, dict(node))
            continue
        cls = term_class(node.get("_target_"), where)
        if cls.side != side:
            raise ConfigError(f"{where} is a {cls.side} term ({cls.__name__}); put it under loss.{cls.side}")
        settings = {key: value for key, value in node.items() if key != "_target_"}
        unknown = sorted(set(settings) - set(term_keys(cls)))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; {cls.__name__} takes {', '.join(term_keys(cls))}")
        try:
            term = cls(**settings)
        except ConfigError as err:
            raise ConfigError(f"{where}.{err}") from None
        if term.weight > 0:
            terms[name] = term
    return terms


def term_keys(term_class: type) -> list[str]:
    """A term's settings (its config keys besides _target_)."""
    return [f.name for f in fields(term_class)]


TERMS = (DMD, SiD, Regression, GanGenerator, Denoising, GanDiscriminator)
