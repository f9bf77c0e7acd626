"""Faithfulness by intervention: does the model's score move when what a map ranks first is changed?

`deletion_curve` / `insertion_curve` (`curves`): voxels ranked by the channel-summed attribution are replaced
by a fill (deletion) or are all that is kept of the input (insertion), a fraction at a time. A faithful map
makes the deletion curve fall fast (low AUC) and the insertion curve rise fast (high AUC).

`block_intervention_curve` / `sign_consistency` (`blocks`): the same on a block grid, as PdCR's faithfulness
protocol (PdCR, arXiv 2602.20511): the top-k blocks of any map (or a seeded random control) are treated
together with a fill or pool patches, averaged over draws; the sign check treats the blocks of each sign.

`curves_with_baselines` (`baselines`): one target's figures beside a seeded random and a blurred ranking.

Every treated input is scored by the perturbation engine (`segxai.methods.perturb.engine`): batches sized to a
memory budget, passes counted, progress, seeded draws, and block effects against the clean input scored in the
same batch (an untreated block set changes nothing, exactly).
"""
from segxai.metrics.faithfulness.baselines import curves_with_baselines
from segxai.metrics.faithfulness.blocks import BlockCurve, SignConsistency, block_intervention_curve, sign_consistency
from segxai.metrics.faithfulness.curves import Curve, deletion_curve, insertion_curve

__all__ = ["BlockCurve", "Curve", "SignConsistency", "block_intervention_curve", "curves_with_baselines", "deletion_curve",
           "insertion_curve", "sign_consistency"]
