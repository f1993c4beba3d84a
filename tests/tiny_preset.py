"""Preset overrides that make every model tiny, so a whole train runs in seconds in tests."""

TINY = {
    "model2d.base_channels": 4,
    "model2d.depth": 2,
    "train2d.iterations": 4,
    "train2d.batch_size": 2,
    "train2d.patch": "16x16",
    "model3d.stem_channels": 4,
    "model3d.growth": 4,
    "model3d.block_layers": "1,1",
    "model3d.up_channels": "4,4",
    "train3d.iterations": 4,
    "train3d.batch_size": 1,
    "train3d.patch": "16x16x16",
    "inference.patch": "16x16x16",
    "meta.model.stem_channels": 4,
    "meta.model.growth": 4,
    "meta.model.block_layers": "1,1",
    "meta.model.up_channels": "4,4",
    "meta.ay_stem_channels": 4,
    "meta.train.batch_size": 1,
    "meta.train.patch": "16x16x16",
    "meta.train.checkpoint_every": 2,
    "meta.train.iterations": 10,
    "meta.stage1_iterations": 4,
    "meta.switch_threshold": 0.0,  # never settles: NN-fit rounds to the end
}

# Fewer steps still, for tests that train several runs or several ranks.
TINIER = {
    **TINY,
    "train2d.iterations": 3,
    "train3d.iterations": 3,
    "meta.train.iterations": 4,
    "meta.stage1_iterations": 2,
}
