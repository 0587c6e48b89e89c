"""QINCo2, the offline neural quantizer of z, and its residual-quantization baseline (faiss-trained,
decoded by our own :class:`ResidualQuantizer`).

Plain PyTorch/NumPy: no Ray, MLflow or file layout (the stage lives in spresso.train.qinco2).
"""
from spresso.quant.beam import encode_normalized
from spresso.quant.checkpoint import (
           build_quantizer,
           load_qinco2,
           load_quantizer,
           quantizer_kind,
           save_qinco2,
           save_rq,
)
from spresso.quant.kmeans import residual_kmeans_init
from spresso.quant.normalize import Normalizer
from spresso.quant.qinco2 import PRESETS, QINCo2, QINCo2Spec, init_networks
from spresso.quant.rq import ResidualQuantizer, RQSpec
from spresso.quant.rq_baseline import FaissRQ

__all__ = ["FaissRQ", "Normalizer", "PRESETS", "QINCo2", "QINCo2Spec", "RQSpec", "ResidualQuantizer", "build_quantizer",
           "encode_normalized", "init_networks", "load_qinco2", "load_quantizer", "quantizer_kind",
           "residual_kmeans_init", "save_qinco2", "save_rq"]
