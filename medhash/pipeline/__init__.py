"""Encoding pipeline: image archives -> sharded Parquet of hash codes, as Dask batch jobs.

`run_encode(EncodeJobConfig(model=..., out=..., inputs=(...,)))` is the entry point (`medhash encode`
on the command line); `encode_shard` encodes one planned shard in-process.
"""

from medhash.pipeline.inputs import InputItem, InputOptions, collect_items
from medhash.pipeline.output import ShardStats
from medhash.pipeline.plan import JobPlan, OutputSpec, ShardPlan, cut_into_shards, read_plan
from medhash.pipeline.runner import EncodeJobConfig, EncodeSummary, run_encode
from medhash.pipeline.shard import EncoderSpec, encode_shard

__all__ = [
    "EncodeJobConfig",
    "EncodeSummary",
    "EncoderSpec",
    "InputItem",
    "InputOptions",
    "JobPlan",
    "OutputSpec",
    "ShardPlan",
    "ShardStats",
    "collect_items",
    "cut_into_shards",
    "encode_shard",
    "read_plan",
    "run_encode",
]
