"""Evaluation: how good an encoder's features are (SimCLR section 4, section 6, appendix B).

    runner.py      `fastclr eval`: load weights, run the chosen protocols, write report.json
    protocols.py   the protocols by name (linear, knn, baselines, diagnostics, plots, ...)
    report.py      report.json merging and the printed table
    features.py    frozen features h and z, and the proof that the encoder stayed frozen
    probes.py      the linear probes and the weighted kNN classifier
    finetune.py    semi-supervised fine-tuning on a fraction of the labels
    diagnostics.py alignment, uniformity, effective rank, contrastive top-1
    monitor.py     signals during pretraining: the kNN monitor, the online probe
    tracking.py    h and z measured on a fixed probe set during pretraining, and the record
    dynamics.py    the record's pictures (fastclr inspect)
    transforms.py  Table 3: what h keeps that z = g(h) drops
    cache.py       results kept across runs (the baselines)
    plots.py       the pictures
    embed.py       features of a whole data set to .npy
    export.py      the encoder for torchvision, timm, ONNX and TorchScript
    weights.py     what eval and embed can be pointed at (run folder, export, checkpoint)
"""
