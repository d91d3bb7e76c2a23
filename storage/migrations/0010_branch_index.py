"""An index on deployments by repository, branch and status: a push finds the unfinished
deployments it supersedes without reading every deployment of its repository."""


def up(migrator, db):
    db.execute_sql('CREATE INDEX IF NOT EXISTS "deployment_repo_full_name_branch_status" '
                   'ON "deployment" ("repo_full_name", "branch", "status")')
