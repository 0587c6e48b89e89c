"""QINCo2, the offline neural quantizer of z, and its faiss residual-quantization baseline.

Plain PyTorch/NumPy: no Ray, MLflow or file layout (the stage lives in spresso.train.qinco2).
"""
from .beam import encode_normalized
from .checkpoint import load_qinco2, save_qinco2
from .kmeans import residual_kmeans_init
from .normalize import Normalizer
from .qinco2 import PRESETS, QINCo2, QINCo2Spec
from .rq_baseline import FaissRQ

__all__ = ["FaissRQ", "Normalizer", "PRESETS", "QINCo2", "QINCo2Spec", "encode_normalized", "load_qinco2",
           "residual_kmeans_init", "save_qinco2"]
