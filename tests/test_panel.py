from types import SimpleNamespace

from pamflow.cli.panel import _instances, _schedule_text, time_window


def test_time_window_from_cron_hours():
    assert time_window("*/15 * * * *") == "always"
    assert time_window("0 6-22 * * 1-5") == "06:00–22:59"
    assert time_window("0 1,13 * * *") == "hours 1,13"
    assert time_window("bad") == "?"


def test_schedule_and_instances_text():
    dep = SimpleNamespace(
        schedules=[SimpleNamespace(active=True, schedule=SimpleNamespace(
            cron="*/5 8-18 * * *", timezone="Europe/Lisbon", interval=None, rrule=None))],
        global_concurrency_limit=SimpleNamespace(limit=3),
        concurrency_options=SimpleNamespace(collision_strategy="ENQUEUE"),
    )
    assert _schedule_text(dep) == ("cron */5 8-18 * * * Europe/Lisbon", "08:00–18:59")
    assert _instances(dep) == "3 (ENQUEUE)"
    dep.global_concurrency_limit = None
    assert _instances(dep) == "∞"
