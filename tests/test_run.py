"""nas.rundir: the run folder's JSON-lines records survive a crash mid-write."""

from __future__ import annotations

import pytest

from nas.rundir import RunDir


def test_a_record_appended_after_a_torn_line_is_kept(tmp_path):
    """A SIGKILL mid-write leaves a last line without its newline; the next append starts a new line, so only
    the torn record is lost (skipped with a warning), never the one written after it."""
    run = RunDir(tmp_path)
    run.append_trial({"trial_id": 0, "status": "completed"})
    with open(run.trials, "a", encoding="utf-8") as f:
        f.write('{"trial_id": 1, "sta')  # torn
    run.append_trial({"trial_id": 2, "status": "failed"})
    with pytest.warns(UserWarning, match=":2: an unreadable line"):
        records = run.read_trials()
    assert [r["trial_id"] for r in records] == [0, 2]


def test_no_trials_file_reads_as_no_records(tmp_path):
    assert RunDir(tmp_path).read_trials() == []
