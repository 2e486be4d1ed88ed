"""qtrain: Quantum-Train model compression for PyTorch.

A parameterised circuit's basis-state probabilities, fed through a small mapping MLP, generate
every weight of a target network; only the circuit angles and the mapping are trained.
"""

from .compress import CompressResult, compress
from .config import CompressConfig, DistillConfig, InitConfig, QTConfig, TrainConfig
from .errors import QTrainError
from .loading import load, regenerate
from .quantum_train import QuantumTrain

__version__ = "0.1.0"
__all__ = ["CompressConfig", "CompressResult", "DistillConfig", "InitConfig", "QTConfig",
           "QTrainError", "QuantumTrain", "TrainConfig", "compress", "load", "regenerate"]
