"""Dataset-scale runs (`segxai run CONFIG.yaml`): cases x methods x targets x ROIs, the evaluation suite per
explanation, a resumable manifest, summary tables and one HTML report; in-process or on Ray.

A configuration (validated by the pydantic models of `config`; relative paths are read from the file's folder;
targets and ROIs use the grammar of `segxai.pipelines.grammar`)::

    model: {checkpoint: abdomen.pt, device: cpu}
    dataset:
      root: data                   # one image file per case, or one sub-folder per case (modalities / DICOM)
      layout: folder               # or kvasir-seg (images/, masks/{name}), msd (imagesTr/, labelsTr/{name})
      masks: labels/{case}.nii.gz  # {case}: the case name, {name}: the image file name
      modalities: ["*flair*", "*t1*"]   # order of a sub-folder's files (optional)
    methods: [saliency, {name: occlusion, params: {window: 8, stride: 8}}]
    targets: ["class:1", "instance:1:2"]
    rois: [none, "reference+4", "prediction+4"]   # the case's mask / the prediction of the target's class, +4 voxels
    evaluation:
      threshold: 0.5               # binarisation for Dice/IoU
      faithfulness: {steps: 10, block: 8}   # deletion/insertion (+ block curves), beside random and blurred maps
      baselines: {sigma: 2}        # ROI / blurred ROI / centred blob / blurred map beside every localisation score
      aggregation: {labels: prediction, outlier_z: 3.5}   # attribution mass per segment; `false` switches a part off
      sanity: {steps: 3, max_correlation: 0.5}
      stability: {noise: 0.05, samples: 1}
    out: run_out
    report: {cases: 8, level: 0.95, resamples: 2000}   # the report's grid; bootstrap intervals over cases

Outputs: `out/cases/<case>/<method>/` (maps with the source geometry, overlays, stats JSON), `manifest.jsonl`,
`rows.csv`, `summary_by_*.csv`, the dataset evidence (`segments.csv`, `segments_distribution.csv`,
`segments_outliers.csv`, `baselines.csv`, `intervals.csv`; all tables also `.parquet` with pyarrow), `figures/`
and `report.html`.
"""
from segxai.pipelines.runs.config import RunConfig, load_config, parse_config
from segxai.pipelines.runs.runner import RunResult, run

__all__ = ["RunConfig", "RunResult", "load_config", "parse_config", "run"]
