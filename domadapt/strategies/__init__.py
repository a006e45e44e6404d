"""Built-in strategies; each is one module and plugs into DomainAdapter without core changes.

Base classes for writing your own live in :mod:`domadapt.strategies.base` and are
exported here too: ``Strategy``, ``WeightedStrategy``, ``AdversarialStrategy``.
"""

from domadapt.strategies.base import AdversarialStrategy, Strategy, WeightedStrategy
from domadapt.strategies.cdan import CDAN
from domadapt.strategies.class_confusion import MCC
from domadapt.strategies.conditional_adversarial import ConditionalAdversarial
from domadapt.strategies.coral import CORAL
from domadapt.strategies.dann import DANN
from domadapt.strategies.entropy import EntropyMinimization
from domadapt.strategies.fine_tune import FineTune
from domadapt.strategies.gradient_reversal import GradientReversal
from domadapt.strategies.mimic_augment import MimicAugment
from domadapt.strategies.mmd import MMD
from domadapt.strategies.nuclear_norm import BNM
from domadapt.strategies.output_adversarial import OutputAdversarial
from domadapt.strategies.self_training import SelfTraining

__all__ = [
    "AdversarialStrategy",
    "BNM",
    "CDAN",
    "CORAL",
    "ConditionalAdversarial",
    "DANN",
    "EntropyMinimization",
    "FineTune",
    "MCC",
    "GradientReversal",
    "MMD",
    "MimicAugment",
    "OutputAdversarial",
    "SelfTraining",
    "Strategy",
    "WeightedStrategy",
]
