"""A bundle that ships RQ instead of QINCo2: exported, loaded, encoded and decoded by the codec with our own
RQ code; its streams say so in the header, and a stream for another model or quantizer gets a one-line error."""
import json

import numpy as np
import pytest
import torch
from codec_toys import make_checkpoints, shared_bundle

import spresso
from spresso.codec import bitstream as bs
from spresso.codec.codec import CodecError
from spresso.core.bundle_io import MANIFEST
from spresso.core.errors import BundleError, SpressoError
from spresso.quant import ResidualQuantizer
from spresso.train.export import export_bundle

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def rq_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("rqb")
    ck = make_checkpoints(root / "ck")
    return export_bundle(ck["audioae"], ck["stage"], ck["rq"], root / "bundle"), ck


def wave(seconds=2.0, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(48000 * seconds)) * 0.1).astype(np.float32)


def test_rq_bundle_manifest_and_models(rq_bundle):
    bundle, _ = rq_bundle
    m = json.loads((bundle / MANIFEST).read_text())
    assert m["format_version"] == 2 and m["configs"]["quantizer"]["kind"] == "rq" and (m["K"], m["M"]) == (16, 4)
    codec = spresso.load(bundle)
    assert isinstance(codec.quantizer, ResidualQuantizer) and codec.quantizer_kind == "rq"
    assert spresso.load(shared_bundle()).quantizer_kind == "qinco2"


def test_rq_bundle_encodes_and_decodes_with_the_sum_of_codewords(rq_bundle):
    bundle, _ = rq_bundle
    codec = spresso.load(bundle, batch_size=2)
    data = codec.encode(wave(), 48000, codebooks=3)
    s = bs.decode_stream(data)
    assert s.quantizer == "rq" and s.version == bs.FORMAT_VERSION and s.m == 3 and data[9] == 1 << 5 | 4
    # decode's z is the normalised sum of the chosen codewords, mapped back (our RQ decoder, no faiss)
    q = codec.quantizer
    z = codec.window_z(codec.parse(data), [0])[0].T  # [frames, C]
    want = sum(q.codebooks[j][torch.from_numpy(s.codes[:, j])] for j in range(3)) * q.norm.std + q.norm.mean
    torch.testing.assert_close(z[: s.n_frames], want.float())
    w, sr = codec.decode(data, steps=1)
    assert sr == 48000 and w.shape == (96000,) and np.isfinite(w).all()
    # a peeled stream still names RQ and decodes
    assert bs.decode_stream(bs.peel(data, 1)).quantizer == "rq"
    assert codec.decode(bs.peel(data, 1), steps=1)[0].shape == (96000,)


def test_streams_for_another_model_or_quantizer_are_refused_in_one_line(rq_bundle):
    bundle, _ = rq_bundle
    rq_codec, q_codec = spresso.load(bundle), spresso.load(shared_bundle())
    q_stream = q_codec.encode(wave(1.0), 48000)
    with pytest.raises(SpressoError, match="another model.*with qinco2 codes") as err:
        rq_codec.decode(q_stream, steps=1)
    assert "\n" not in str(err.value)
    with pytest.raises(SpressoError, match="with rq codes"):
        q_codec.decode(rq_codec.encode(wave(1.0), 48000), steps=1)
    # same model id, wrong quantizer (a hand-made stream): named as such
    codes = bs.decode_stream(rq_codec.encode(wave(1.0), 48000)).codes
    forged = bs.encode_stream(bs.Stream.discrete(codes, 16, model_id=rq_codec.model_id, time_factor=100,
                                                 sample_count=48000, quantizer="qinco2"))
    with pytest.raises(CodecError, match="stream holds qinco2 codes, this bundle's quantizer is rq"):
        rq_codec.decode(forged, steps=1)


def test_a_newer_bundle_format_is_refused_in_one_line(rq_bundle, tmp_path):
    bundle, _ = rq_bundle
    m = json.loads((bundle / MANIFEST).read_text())
    out = tmp_path / "b"
    out.mkdir()
    for f in bundle.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    (out / MANIFEST).write_text(json.dumps({**m, "format_version": 3}))
    with pytest.raises(BundleError, match="format version 3 is not supported by this spresso .reads versions 1, 2"):
        spresso.load(out)
