"""Built-in strategies; each is one module and plugs into DomainAdapter without core changes."""

from domadapt.strategies.conditional_adversarial import ConditionalAdversarial
from domadapt.strategies.coral import CORAL
from domadapt.strategies.entropy import EntropyMinimization
from domadapt.strategies.fine_tune import FineTune
from domadapt.strategies.gradient_reversal import GradientReversal
from domadapt.strategies.mimic_augment import MimicAugment
from domadapt.strategies.mmd import MMD

__all__ = ["CORAL", "ConditionalAdversarial", "EntropyMinimization", "FineTune", "GradientReversal", "MMD", "MimicAugment"]
