"""The ``dnsmos`` scorer: DNSMOS P.835 (SIG, BAK, OVRL) and P.808 speech quality, 1 (bad) to 5 (excellent).

The models are Microsoft's ONNX files inside the ``speechmos`` wheel (MIT licence, Microsoft
Corporation; the models are those of the DNS Challenge's DNSMOS), run with ONNX Runtime.
Per clip the procedure is speechmos's ``dnsmos.run`` (the DNS Challenge's own script): at
16 kHz, a clip shorter than 9.01 s is repeated (doubled) until it is at least that long; the
model scores 9.01 s segments one second apart (all of them: speechmos drops some of a clip of 17 s or more,
:func:`segments`); SIG, BAK and OVRL are the raw outputs mapped
through DNSMOS's calibration polynomials and averaged over the segments, P.808 the mean of the
P.808 model on each segment's mel spectrogram. The scores are the same numbers speechmos gives
for the same samples (tests check it bit for bit); speechmos only refuses samples beyond
[-1, 1], which are scored here as they are (a resampled clipped clip overshoots a little).

Cost: about a third of a CPU-second per segment (the clip's length sets the number of segments:
1 for 9.01-10.99 s, 3 for a 3 s clip repeated to 12 s). On CPU every forward is one segment
(batching measured no faster, and one shape keeps the bytes independent of the batch); with
``onnxruntime-gpu`` installed in place of ``onnxruntime`` a GPU actor runs forwards of
``forward_batch`` segments on CUDA, padded to exactly that many.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .options import DnsmosOptions  # noqa: F401  (re-exported: torch-free, in options)
from .scorers import COLUMNS as SCORER_COLUMNS

COLUMNS = SCORER_COLUMNS["dnsmos"]
SAMPLE_RATE = 16000
SEGMENT_SECONDS = 9.01  # speechmos.dnsmos.INPUT_LENGTH


def segments(audio: np.ndarray) -> list[np.ndarray]:
    """The 9.01 s segments of one 16 kHz clip, one second apart: speechmos's for every clip under 17 s.

    speechmos cuts segment ``i`` at ``int((i + 9.01) * 16000)``, which float arithmetic makes one sample
    short for ``i`` = 7 to 23 and 119 to 122 (16.009999... * 16000), and drops it: a 30 s clip kept 7 of its 21
    segments, none starting between 7 and 23 s. A clip of 9.01 s or more here gets every segment
    (``i * 16000 + 144160``: the same bytes for every segment speechmos keeps). A shorter clip is
    repeated as speechmos does and keeps speechmos's segments (a clip repeated to 17-18 s: 7 of 9),
    so every clip under 17 s (the first to have a segment at 7 s) scores exactly as speechmos scores it.
    """
    if len(audio) == 0:
        raise ValueError("empty clip")
    length = int(SEGMENT_SECONDS * SAMPLE_RATE)
    repeated = len(audio) < length
    while len(audio) < length:
        audio = np.append(audio, audio)
    hops = int(np.floor(len(audio) / SAMPLE_RATE) - SEGMENT_SECONDS) + 1
    out = []
    for i in range(hops):
        end = int((i + SEGMENT_SECONDS) * SAMPLE_RATE) if repeated else i * SAMPLE_RATE + length
        segment = audio[i * SAMPLE_RATE : end]
        if len(segment) == length:
            out.append(segment.astype(np.float32))
    return out


class DnsmosScorer:
    columns = COLUMNS

    def __init__(self, *, personalized: bool = False, device: torch.device | str = "cpu", forward_batch: int = 16):
        import onnxruntime as ort
        from speechmos import dnsmos as speechmos_dnsmos

        root = Path(speechmos_dnsmos.__file__).parent
        primary = root / ("pdnsmos_models" if personalized else "dnsmos_models") / "sig_bak_ovr.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # Ray scales by actors; one thread keeps each actor to its CPU
        options.inter_op_num_threads = 1
        cuda = torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        # speechmos's own class for its mel spectrogram and calibration polynomials, with sessions
        # configured here (one thread, the device's provider) in place of the defaults its __init__ makes.
        self.model = object.__new__(speechmos_dnsmos.DNSMOS)
        self.model.primary_model_path = str(primary)
        self.model.onnx_sess = ort.InferenceSession(str(primary), options, providers=providers)
        self.model.p808_onnx_sess = ort.InferenceSession(
            str(root / "dnsmos_models" / "model_v8.onnx"), options, providers=providers
        )
        self.personalized = personalized
        self.batch = forward_batch if cuda else 1

    def forward(self, session, inputs: list[np.ndarray]) -> np.ndarray:
        """``session`` on ``inputs`` in forwards of exactly ``self.batch`` rows (the last zero-padded)."""
        outputs = []
        for start in range(0, len(inputs), self.batch):
            chunk = np.stack(inputs[start : start + self.batch])
            real = len(chunk)
            if real < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - real, *chunk.shape[1:]), chunk.dtype)])
            outputs.append(session.run(None, {"input_1": chunk})[0][:real])
        return np.concatenate(outputs)

    def __call__(self, clips) -> dict[str, np.ndarray]:
        owners, pieces = [], []
        for row, audio in enumerate(clips.waveforms(SAMPLE_RATE)):
            for segment in segments(audio):
                owners.append(row)
                pieces.append(segment)
        owners = np.array(owners)
        raw = self.forward(self.model.onnx_sess, pieces)  # [segments, 3] float32: SIG, BAK, OVRL
        mels = [self.model.audio_melspec(audio=segment[:-160]).astype(np.float32) for segment in pieces]
        p808 = self.forward(self.model.p808_onnx_sess, mels)[:, 0]
        sig, bak, ovrl = self.model.get_polyfit_val(raw[:, 0], raw[:, 1], raw[:, 2], self.personalized)
        out = {name: np.full(len(clips), np.nan) for name in COLUMNS}
        for row in range(len(clips)):
            mine = owners == row
            for name, values in zip(COLUMNS, (sig, bak, ovrl, p808)):
                out[name][row] = np.mean(values[mine])  # speechmos's mean over segments (float32 for P.808)
        return out
