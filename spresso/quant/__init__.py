"""QINCo2, the offline neural quantizer of z, and its faiss residual-quantization baseline.

Plain PyTorch/NumPy: no Ray, MLflow or file layout (the stage lives in spresso.train.qinco2).
"""
from spresso.quant.beam import encode_normalized
from spresso.quant.checkpoint import load_qinco2, save_qinco2
from spresso.quant.kmeans import residual_kmeans_init
from spresso.quant.normalize import Normalizer
from spresso.quant.qinco2 import PRESETS, QINCo2, QINCo2Spec, init_networks
from spresso.quant.rq_baseline import FaissRQ

__all__ = ["FaissRQ", "Normalizer", "PRESETS", "QINCo2", "QINCo2Spec", "encode_normalized", "load_qinco2",
           "init_networks", "residual_kmeans_init", "save_qinco2"]
