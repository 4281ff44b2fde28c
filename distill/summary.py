"""The few lines a run ends with on stdout: each sampler's figures beside the teacher's, the speed, what to open."""
from __future__ import annotations

from pathlib import Path


def teacher_label(metrics: dict) -> str | None:
    """The teacher's full sampler: the teacher entry with the most network evaluations."""
    teachers = [label for label in metrics if label.startswith("teacher_")]
    return max(teachers, key=lambda label: metrics[label].get("nfe", 0)) if teachers else None


def quality(entry: dict, teacher: dict | None) -> str:
    """FID with its interval (or the toy figures), and its ratio to the teacher's, in each feature space."""
    if "fid" not in entry:  # toy data: Frechet distance, MMD and mode recall
        parts = [f"FD {entry['fd']:.4g}", f"MMD {entry['mmd']:.3g}", f"mode recall {entry['mode_recall']:.2f}"]
        if teacher is not None and teacher is not entry and teacher.get("fd"):
            parts[0] += f" ({entry['fd'] / teacher['fd']:.2f}x the teacher's)"
        return ", ".join(parts)
    text = f"FID {entry['fid']:.3g}"
    if entry.get("fid_ci95"):
        low, high = entry["fid_ci95"]
        text += f" [{low:.3g}, {high:.3g}]"
    if teacher is not None and teacher is not entry and teacher.get("fid"):
        text += f" = {entry['fid'] / teacher['fid']:.2f}x the teacher's"
    second, second_teacher = entry.get("second_extractor"), (teacher or {}).get("second_extractor")
    if second and "fid" in second:
        text += f"; second feature space {second['fid']:.3g}"
        if second_teacher and second_teacher is not second and second_teacher.get("fid") and teacher is not entry:
            text += f" = {second['fid'] / second_teacher['fid']:.2f}x"
    return text


def speed(entry: dict, teacher: dict | None) -> str:
    """Images per second, and the ratio to the teacher sampler's."""
    seconds = entry.get("seconds_per_sample")
    if not seconds:
        return ""
    text = f"{1 / seconds:,.0f} images/s"
    if teacher is not None and teacher is not entry and teacher.get("seconds_per_sample"):
        text += f" ({teacher['seconds_per_sample'] / seconds:.1f}x the teacher's)"
    return text


def summary_lines(metrics: dict, run_dir: Path) -> list[str]:
    """The run's result in a few lines: a line a sampler, then the files to open and the serve command."""
    run_dir = Path(run_dir)
    teacher = metrics.get(teacher_label(metrics) or "")
    lines = [f"Result ({run_dir / 'metrics.json'}):"]
    width = max((len(label) for label in metrics), default=0)
    for label, entry in sorted(metrics.items(), key=lambda item: not item[0].startswith("teacher_")):  # teachers first
        if label == "data" or not isinstance(entry, dict):
            continue
        figures = ", ".join(part for part in (quality(entry, teacher), speed(entry, teacher)) if part)
        lines.append(f"  {label.ljust(width)}  {entry.get('nfe', '?')} NFE: {figures}")
    sheets = sorted((run_dir / "grids").glob("step-*.png"))
    opened = [run_dir / "grids" / "teacher_student.png", *sheets[-1:], run_dir / "student" / "README.md"]
    lines.append("Open: " + ", ".join(str(path) for path in opened if path.exists()))
    if (run_dir / "student" / "model_index.json").is_file():  # an image student's pipeline folder: the server shows it
        lines.append(f"Serve: python -m distill.serve {run_dir}")
    return lines
