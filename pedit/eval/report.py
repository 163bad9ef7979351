"""`pedit eval`'s report folder: checked before any work, then report.json, report.md (Markdown tables) and grid.png."""

from __future__ import annotations

import json
from pathlib import Path

NA_OFFLINE = "n/a: weights not available offline"

REPORT_FILES = ("report.json", "report.md", "grid.png")


def check_report_folder(cfg) -> None:
    """Before any work: the report folder can be written, and holds no earlier report unless --overwrite."""
    from pedit.errors import OutputError
    from pedit.files import exists_error

    from pedit.files import check_output_not_input

    if cfg.output is None:
        return
    check_output_not_input(cfg.output, {"-m": cfg.model, "--pairs": getattr(cfg, "pairs", None),
                                        **{"--photos": p for p in getattr(cfg, "photos", ())}})
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise OutputError(f"-o {out} is a file; eval writes a report folder ({', '.join(REPORT_FILES)}).")
    for name in REPORT_FILES:
        if (out / name).exists() and not cfg.overwrite:
            raise exists_error(out / name)


def write_report(out: Path, report: dict, grid_rows: list, cfg) -> None:
    """The report files, each atomic and exclusive (the same overwrite rule as `pedit edit`)."""
    from pedit.errors import OutputError
    from pedit.files import commit_all, stage, write_failure
    from pedit.viz import image_grid

    check_report_folder(cfg)  # again: another run may have written a report meanwhile
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"Cannot create report folder {out}: {e.strerror or e}.") from e
    # All three files or none (a full disk at the grid left a report without it): each is finished in its
    # temp first, then all take their names together (pedit.files.commit_all, as an edit's files).
    writes = [(out / "report.json", lambda f: f.write(json.dumps(report, indent=2).encode())),
              (out / "report.md", lambda f: f.write(markdown_report(report).encode()))]
    if grid_rows:
        grid = image_grid(grid_rows, col_labels=["input", "ground truth", *cfg.methods])
        writes.append((out / "grid.png", lambda f: grid.save(f, format="PNG")))
    staged = []
    try:
        for path, write in writes:
            staged.append((stage(path, write), path))
        commit_all(staged, cfg.overwrite)
    except BaseException as e:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        if (why := write_failure(e)) is not None:
            raise OutputError(f"Could not write the report into {out}: {why}; nothing of it was kept.") from None
        raise


def _fmt(v, digits=2) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    return "inf" if v == float("inf") else f"{v:.{digits}f}"


def markdown_report(report: dict, on_grid: bool = True) -> str:
    """The report as Markdown tables: one row a method, then per-direction rows of each method; then the
    same against the true region on the latent grid, where the report has it (on_grid=False: a line
    pointing at report.md instead, as the console shows it)."""
    lines = [f"{report['pairs']} pairs, model `{report['model']}`\n"]
    rows = list(report["methods"].items())
    if "imperfect_targets" in report:
        rows.append(("imperfect targets (reference)", report["imperfect_targets"]))
    lines += _method_table(rows)
    lines.append("\nLPIPS, FID: " + NA_OFFLINE + ".\n")
    lines += _direction_tables(report["per_direction"])
    if "on_grid_truth" in report and not on_grid:
        cells = report["on_grid_truth"]["cells"]
        lines.append(f"\nThe same tables against the true region on the {cells}×{cells} latent grid: report.md "
                     "(on_grid_truth in report.json).")
    elif "on_grid_truth" in report:
        grid = report["on_grid_truth"]
        cells = grid["cells"]
        lines.append(f"\n## Against the true region on the {cells}×{cells} latent grid\n\n"
                     f"The truth here is the {cells}×{cells} grid mask nearest the true region (the best IoU any "
                     "latent-grid mask reaches: the ceiling above), the region a latent-grid editor can at best aim "
                     "for. SSIM does not depend on the truth (above); the IoU ceiling is 1 by construction.\n")
        lines += _method_table(list(grid["methods"].items()))
        lines += _direction_tables(grid["per_direction"])
    return "\n".join(lines) + "\n"


def _method_table(rows: list) -> list[str]:
    lines = ["| method | SSIM | PSNR | PSNR in mask | PSNR outside mask | mask IoU | latent mask IoU | changed-pixels IoU "
             "| PSNR edge band | mask error in edge band | LPIPS | FID | s/pair |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in rows:
        lines.append(
            f"| {name} | {_fmt(s['ssim'], 3)} | {_fmt(s['psnr'])} | {_fmt(s['psnr_in_mask'])} | "
            f"{_fmt(s['psnr_outside_mask'])} | {_fmt(s['mask_iou'], 3)} | {_fmt(s.get('latent_mask_iou'), 3)} | "
            f"{_fmt(s.get('changed_pixels_iou'), 3)} | {_fmt(s.get('psnr_edge_band'))} | "
            f"{_fmt(s.get('mask_edge_error'), 3)} | n/a | "
            f"n/a | {_fmt(s.get('seconds_per_pair'), 3)} |"
        )
    return lines


def _direction_tables(per_direction: dict) -> list[str]:
    lines = []
    for m, by_dir in per_direction.items():
        lines.append(f"\n**{m}** per direction\n")
        lines.append("| direction | pairs | SSIM | PSNR | PSNR in mask | PSNR outside mask | mask IoU | IoU ceiling "
                     "(latent grid) | IoU / ceiling | latent mask IoU | mask precision | mask recall | changed-pixels IoU "
                     "| PSNR edge band | mask error in edge band |"
                     "\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for d, s in by_dir.items():
            iou, ceiling = s["mask_iou"], s.get("mask_iou_ceiling")
            share = f"{100 * iou / ceiling:.0f} %" if iou is not None and ceiling else "–"
            lines.append(f"| {d} | {s['pairs']} | {_fmt(s['ssim'], 3)} | {_fmt(s['psnr'])} | {_fmt(s['psnr_in_mask'])} | "
                         f"{_fmt(s['psnr_outside_mask'])} | {_fmt(iou, 3)} | {_fmt(ceiling, 3)} | {share} | "
                         f"{_fmt(s.get('latent_mask_iou'), 3)} | "
                         f"{_fmt(s.get('mask_precision'), 3)} | {_fmt(s.get('mask_recall'), 3)} | "
                         f"{_fmt(s.get('changed_pixels_iou'), 3)} | {_fmt(s.get('psnr_edge_band'))} | "
                         f"{_fmt(s.get('mask_edge_error'), 3)} |")
    return lines
