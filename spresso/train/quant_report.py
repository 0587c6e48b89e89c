"""The qinco2 stage's held-out comparison with RQ, and which quantizer it ships.

Every run scores QINCo2 and a faiss-trained RQ (same training vectors, K, M and encoding beam)
on the held-out rows (valid + test), m by m, in absolute terms: relative MSE = error over the
held-out vectors' variance. Where QINCo2 does not beat RQ the run says so: a WARNING line, the
MLflow tag ``quantizer_loses_to_rq`` (e.g. ``m4,m8``) and a note the pipeline summary prints.
``qinco2.ship`` picks the published quantizer: ``best`` is QINCo2 only when it beats RQ at every m.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from spresso.core.rates import bits_per_frame
from spresso.runtime.tracking import TAG_NOTE

LOSS_TAG = "quantizer_loses_to_rq"
SHIPPED_TAG = "spresso.quantizer.shipped"
COMPARISON_FILE = "quantizer_comparison.md"
SHIP_FILE = "ship.json"  # in the checkpoint: which quantizer the run publishes, and why


@dataclass
class QuantizerComparison:
    """Held-out relative MSE per m of QINCo2 (``qinco2``) and RQ (``rq``), and how both were set up."""

    qinco2: dict[int, float]
    rq: dict[int, float]
    K: int
    beam: int
    candidates: int
    rq_beam: int
    rq_train_type: str
    train_vectors: int  # what QINCo2 trains on
    rq_train_vectors: int  # what RQ trained on (equal unless qinco2.rq_train_vectors subsamples)
    held_out_vectors: int
    extra: dict = field(default_factory=dict)

    @property
    def ms(self) -> list[int]:
        return sorted(self.qinco2)

    def ratio(self, m: int) -> float:
        return self.qinco2[m] / self.rq[m] if self.rq[m] > 0 else math.inf

    def losses(self) -> list[int]:
        """The m at which QINCo2 does not beat RQ (equal or larger held-out error)."""
        return [m for m in self.ms if not self.qinco2[m] < self.rq[m]]

    def shipped(self, ship: str) -> str:
        """The quantizer ``qinco2.ship`` publishes: ``qinco2`` or ``rq``."""
        if ship not in ("qinco2", "rq", "best"):
            raise ValueError(f"qinco2.ship must be qinco2, rq or best, got {ship!r}")
        if ship == "best":
            return "rq" if self.losses() else "qinco2"
        return ship

    def loss_tag(self) -> str:
        return ",".join(f"m{m}" for m in self.losses()) or "none"

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in self.ms:
            out[f"heldout_rel_mse_qinco2_m{m}"] = self.qinco2[m]
            out[f"heldout_rel_mse_rq_m{m}"] = self.rq[m]
            out[f"ratio_to_rq_m{m}"] = self.ratio(m)
            out[f"val_mse_m{m}"] = self.qinco2[m]  # the names earlier runs used (same held-out numbers)
            out[f"rq_val_mse_m{m}"] = self.rq[m]
        out["quantizer_losses_to_rq"] = float(len(self.losses()))
        out["rq_train_vectors"] = float(self.rq_train_vectors)
        out["heldout_vectors"] = float(self.held_out_vectors)
        return out

    def note(self, shipped: str) -> str:
        """One line for the log and the pipeline summary (empty when QINCo2 wins everywhere and ships)."""
        losses = self.losses()
        if not losses:
            return "" if shipped == "qinco2" else "ships rq although QINCo2 beats it at every m (qinco2.ship=rq)"
        worst = max(losses, key=self.ratio)
        return (f"QINCo2 loses to RQ at {self.loss_tag()} (worst m{worst}: {self.ratio(worst):.2f}x RQ's held-out error); "
                f"ships {shipped}")

    def table(self, shipped: str) -> str:
        """Markdown: the setup, then one row per m (bits, both relative MSEs, ratio, winner)."""
        lines = [
            f"QINCo2 vs RQ on {self.held_out_vectors} held-out vectors (valid + test rows); relative MSE = "
            "error / held-out variance.",
            f"K={self.K}; QINCo2 beam {self.beam}, candidates {self.candidates}, {self.train_vectors} training vectors; "
            f"RQ (faiss, {self.rq_train_type}) beam {self.rq_beam}, {self.rq_train_vectors} training vectors "
            f"({'the same' if self.rq_train_vectors == self.train_vectors else 'a subsample'}). Shipped: {shipped}.",
            "",
            "| m | bits | QINCo2 | RQ | ratio | better |",
            "|---|---|---|---|---|---|",
        ]
        for m in self.ms:
            better = "QINCo2" if m not in self.losses() else "RQ"
            lines.append(f"| {m} | {bits_per_frame(m, self.K):.0f} | {self.qinco2[m]:.6f} | {self.rq[m]:.6f} | "
                         f"{self.ratio(m):.3f} | {better} |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return asdict(self)


def ship_record(comparison: QuantizerComparison, ship: str) -> dict:
    """What the checkpoint's ``ship.json`` holds: the choice, the setting behind it and the evidence."""
    shipped = comparison.shipped(ship)
    return {"shipped": shipped, "ship": ship, "losses": comparison.losses(), "loss_tag": comparison.loss_tag(),
            "note": comparison.note(shipped), "comparison": comparison.to_dict()}


def ship_tags(record: dict) -> dict[str, str]:
    """The MLflow tags of a run's choice (``record``: :func:`ship_record`)."""
    tags = {SHIPPED_TAG: record["shipped"], LOSS_TAG: record["loss_tag"]}
    if record["note"]:
        tags[TAG_NOTE] = record["note"]
    return tags
