"""GitHub's outbox: the states deployments are to show on GitHub, each sent once, in order.

The database writes a row whenever a deployment's GitHub state changes (migration 0008's
triggers), in the very transaction of the change, whichever replica or query made it. One
replica at a time sends them (bot/reporter.py); a row is taken by a conditional write naming its
sender, so a replica whose lease ran out cannot finish a row another took over.
"""
from peewee import Select, Value, fn

from storage.db import clock, write_transaction
from storage.models import Deployment, Report

WAITING, SENDING, SENT, DROPPED, GIVEN_UP = "waiting", "sending", "sent", "dropped", "given_up"
OPEN = (WAITING, SENDING)
# The key of a torn-down environment's report: its GitHub Deployment marked inactive. Made by
# deactivate, not by the triggers (it is no change of the deployment's own state).
INACTIVE = "inactive"


def due(limit: int = 100) -> list[tuple[Report, Deployment]]:
    """The next report of each deployment that has one to send (its oldest open one: a later
    one waits for it), with the deployment, oldest first."""
    earlier = Report.alias()
    blocked = earlier.select(earlier.id).where(earlier.deployment_id == Report.deployment_id,
                                               earlier.id < Report.id, earlier.state.in_(OPEN))
    rows = (Report.select(Report, Deployment)
            .join(Deployment, on=(Deployment.id == Report.deployment_id), attr="deployment")
            .where(Report.state.in_(OPEN), ~fn.EXISTS(blocked))
            .order_by(Report.id).limit(limit))
    return [(row, row.deployment) for row in rows]


def take(report_id: int, sender: str, from_sender: str | None = None) -> bool:
    """Make the replica sender the one sending a report: a waiting one, or (from_sender) one a
    replica whose lease ran out was sending. False when another took it first."""
    taken = Report.update(state=SENDING, sender=sender).where(Report.id == report_id)
    if from_sender is None:
        taken = taken.where(Report.state == WAITING)
    else:
        taken = taken.where(Report.state == SENDING, Report.sender == from_sender)
    return taken.execute() == 1


def holds(report_id: int, sender: str) -> bool:
    """Whether sender still sends the report (no other replica took it over meanwhile)."""
    return Report.select().where(Report.id == report_id, Report.state == SENDING,
                                 Report.sender == sender).exists()


def hand_back(report_id: int, sender: str) -> None:
    """Give up sending a report without an outcome: it waits again, still naming its sender,
    so that the next one to send it first looks whether GitHub has it (an attempt may have
    reached GitHub)."""
    Report.update(state=WAITING).where(Report.id == report_id, Report.state == SENDING,
                                       Report.sender == sender).execute()


def step(report_id: int, sender: str, steps: int) -> None:
    """Record how far the report got on GitHub, so a retry does not repeat that part."""
    Report.update(steps=steps).where(Report.id == report_id, Report.sender == sender).execute()


def end(report_id: int, sender: str, state: str) -> bool:
    """Record what came of sending a report: SENT, DROPPED or GIVEN_UP; False (nothing
    written) when another replica took it over meanwhile."""
    return Report.update(state=state).where(Report.id == report_id, Report.state == SENDING,
                                            Report.sender == sender).execute() == 1


def deactivate(deployments: Select) -> None:
    """Queue marking the GitHub Deployments of the deployments a query selects inactive (their
    environment is torn down): once each, after the states they wait to show. One INSERT ...
    SELECT: no ids read back, however many deployments a pull request made."""
    marks = deployments.select(Deployment.id, Value(INACTIVE), Value(WAITING), Value(0), clock())
    Report.insert_from(marks, [Report.deployment_id, Report.key, Report.state, Report.steps,
                               Report.created_at]).on_conflict_ignore().execute()


def overtaken(report: Report) -> bool:
    """Whether a newer state of the same deployment waits behind this report (marking it
    inactive is no newer state: what it showed before still has to get there)."""
    return Report.select().where(Report.deployment_id == report.deployment_id,
                                 Report.id > report.id, Report.state == WAITING,
                                 Report.key != INACTIVE).exists()


def revive(within: float) -> int:
    """Queue again each deployment's newest report if it was given up and made within the last
    within seconds: the state GitHub should show now, once GitHub answers again. It keeps its
    sender: an attempt may have reached GitHub, which is looked at first."""
    # The newest state, that is: an inactive mark is no state. Its own row is queued again
    # behind a revived one, so the state cannot make a torn-down Deployment active again.
    newest = (Report.select(fn.MAX(Report.id)).where(Report.key != INACTIVE)
              .group_by(Report.deployment_id))
    with write_transaction():
        revived = list(Report.update(state=WAITING).where(
            Report.state == GIVEN_UP, Report.id.in_(newest),
            Report.created_at >= clock() - within).returning(Report.deployment_id).tuples())
        Report.update(state=WAITING).where(
            Report.key == INACTIVE, Report.deployment_id.in_([d for (d,) in revived] or [0])
        ).execute()
    return len(revived)


def unsent() -> int:
    """How many reports are waiting or being sent."""
    return Report.select().where(Report.state.in_(OPEN)).count()


def of(deployment_id: int) -> list[tuple[str, str]]:
    """A deployment's reports, (key, state) in order."""
    return list(Report.select(Report.key, Report.state)
                .where(Report.deployment_id == deployment_id).order_by(Report.id).tuples())
