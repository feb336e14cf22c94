"""Demo inputs: when a config's local input folder does not exist, generate clips there instead.

    input_uri = demo_input(cfg)   # cfg.input.uri, or the generated clips' folder (jobs call it before run)

`input.generate_shapes` writes a labelled split of the shapes task there (its questions.jsonl included);
`input.generate_if_missing` writes plain clips to a temporary folder.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.config import JobConfig
from pipeline.run import missing_locally
from pipeline.storage import filesystem
from shapes.clips import make_clips, write_split


def demo_input(cfg: JobConfig) -> str:
    """input.uri, or (demo) generated clips when that local path does not exist: a shapes split written
    there (input.generate_shapes), or short synthetic clips in a temporary folder (generate_if_missing)."""
    uri = cfg.input.uri
    missing = missing_locally(uri)
    shapes = cfg.input.generate_shapes
    if shapes is not None and missing:
        path = Path(filesystem(uri)[1])
        if path.name != shapes.split:
            raise ValueError(f"input.generate_shapes: input.uri {uri} must end in the split's name {shapes.split!r}")
        labels = write_split(path.parent, shapes.split, shapes.clips, frames=shapes.frames)
        print(f"{uri} not found: generated {shapes.clips} shapes clips ({shapes.split} split) and {labels}", flush=True)
    elif cfg.input.generate_if_missing and missing:
        folder = Path(tempfile.gettempdir()) / "flashvlm-demo-clips"
        make_clips(folder, cfg.input.generate_if_missing)
        print(f"{uri} not found: using {cfg.input.generate_if_missing} generated clips in {folder}", flush=True)
        return str(folder)
    return uri
