"""Offline rendering for ``dvc plots show`` and ``dvc plots diff``.

DVC's own HTML page loads vega, vega-lite and vega-embed from a CDN, so without a network it shows nothing. This
module writes an HTML template for DVC with those three libraries inlined (the bundle that ``vl-convert-python``
ships, no network needed) and points DVC at it through ``plots.html_template`` in ``.dvc/config.local``, so the
plain DVC commands render offline on this machine. Charts are drawn as SVG.
"""

from __future__ import annotations

from pathlib import Path

from dvc.config import Config

TEMPLATE = "tmp/mmkd_offline_plots.html"  # relative to .dvc/, as DVC reads plots.html_template; tmp/ is ignored

# DVC calls vegaEmbed('#id', spec) from an inline script per plot, so the libraries must be globals when the body
# runs: a classic script in <head>, not a module.
_SNIPPET = """
window.vega = vega;
window.vegaLite = vegaLite;
window.vegaEmbed = (el, spec, opts) => vegaEmbed(el, spec, Object.assign({renderer: "svg"}, opts || {}));
"""

_PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot (offline)</title>
    <script type="text/javascript">
@BUNDLE@
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def offline_template() -> str:
    """An HTML template for DVC plots with vega, vega-lite and vega-embed inlined (no ``{scripts}`` slot, so DVC
    adds no CDN links)."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(_SNIPPET)
    # An inline script ends at the first "</script"; DVC fills its slots by plain text replacement.
    bundle = bundle.replace("</script", "<\\/script")
    for slot in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
        if slot in bundle:
            raise RuntimeError(f"the vega bundle contains DVC's template slot {slot}; cannot inline it safely")
    return _PAGE.replace("@BUNDLE@", bundle)


def install_offline_template(repo_root: str | Path = ".") -> Path:
    """Write the offline template into ``<repo>/.dvc/`` and set it as this clone's ``plots.html_template``."""
    dvc_dir = Path(repo_root) / ".dvc"
    if not dvc_dir.is_dir():
        raise FileNotFoundError(f"{Path(repo_root).resolve()} is not a DVC repository (no .dvc/); run it at the root")
    path = dvc_dir / TEMPLATE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(offline_template(), encoding="utf-8")
    config = Config(dvc_dir=str(dvc_dir))
    with config.edit("local") as conf:
        conf.setdefault("plots", {})["html_template"] = TEMPLATE
    return path
