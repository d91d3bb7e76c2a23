"""Log cursors count the pieces stored at their time; running deployments keep their secrets
sealed; pull requests recorded before forks were told apart are told apart now."""
import urllib.parse

from peewee import IntegerField, TextField


def _full_name(url: str) -> str:
    path = urllib.parse.urlsplit(url).path.strip("/").removesuffix(".git")
    return "/".join(path.split("/")[-2:]).lower()


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("deployment", "log_seen", IntegerField(default=0)),
        migrator.add_column("deployment", "secrets_sealed", TextField(null=True)),
    )
    # A cursor stored before meant one piece at its time.
    db.execute_sql("UPDATE deployment SET log_seen = 1 WHERE log_cursor IS NOT NULL")
    p = db.param
    rows = db.execute_sql("SELECT id, url, repo_full_name FROM deployment "
                          "WHERE pull_request IS NOT NULL AND repo_full_name IS NOT NULL")
    forks = [i for i, url, full_name in rows.fetchall() if _full_name(url) != full_name.lower()]
    for deployment_id in forks:  # a fork's head is cloned from the fork, not the repository
        db.execute_sql(f"UPDATE deployment SET fork = {p} WHERE id = {p}", (True, deployment_id))
