import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  classifyFailure,
  failedMessage,
  lastException,
  parseCurrent,
  parseHeads,
  parseHistory,
  parseRunningLine,
  parseRunningLines,
  parseVersion,
  type FailureKind,
  type RunEnding,
} from "./alembic-output.js";

// Recorded with /usr/bin/alembic 1.8.1, SQLAlchemy 1.4.46, SQLite 3.40.1 and PostgreSQL 15 against
// test/fixtures/webui (paths of temporary files shortened). Traceback frames before the last four frame
// lines are elided as "  …"; nothing else is edited.
const REC = {
  // upgrade head on a fresh SQLite file
  happy: {
    exit: 0,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade  -> a1f0c0de0001, init
INFO  [alembic.runtime.migration] Running upgrade a1f0c0de0001 -> b2e1d0c0ffee, Add message and config tables
INFO  [alembic.runtime.migration] Running upgrade b2e1d0c0ffee -> c3d2e1f00d42, Add reply_to_id column to message
INFO  [alembic.runtime.migration] Running upgrade c3d2e1f00d42 -> d4c3b2a1e5f6, Add chat pinned and meta, backfill tags from chat JSON
INFO  [fixapp.migrate] chat meta backfill: 0/0 rows
INFO  [alembic.runtime.migration] Running upgrade d4c3b2a1e5f6 -> e5f4a3b2c1d0, Add message indexes
INFO  [alembic.runtime.migration] Running upgrade e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required and unique
INFO  [alembic.runtime.migration] Running upgrade f6a5b4c3d2e1 -> 0a7b8c9d0e1f, Add chat archived_at and shared_chat table
INFO  [alembic.runtime.migration] Running upgrade 0a7b8c9d0e1f -> 1b8c9d0e1f2a, Add user settings and chat user/updated index
`,
  },
  // current at head (SQLite)
  "happy-current": {
    exit: 0,
    stdout: `1b8c9d0e1f2a (head)
`,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
`,
  },
  // history (alembic.ini)
  "happy-history": {
    exit: 0,
    stdout: `0a7b8c9d0e1f -> 1b8c9d0e1f2a (head), Add user settings and chat user/updated index
f6a5b4c3d2e1 -> 0a7b8c9d0e1f, Add chat archived_at and shared_chat table
e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required and unique
d4c3b2a1e5f6 -> e5f4a3b2c1d0, Add message indexes
c3d2e1f00d42 -> d4c3b2a1e5f6, Add chat pinned and meta, backfill tags from chat JSON
b2e1d0c0ffee -> c3d2e1f00d42, Add reply_to_id column to message
a1f0c0de0001 -> b2e1d0c0ffee, Add message and config tables
<base> -> a1f0c0de0001, init
`,
    stderr: ``,
  },
  // current -v at head (SQLite)
  "cur-v": {
    exit: 0,
    stdout: `Current revision(s) for sqlite:////tmp/rec/f.db:
Rev: 1b8c9d0e1f2a (head)
Parent: 0a7b8c9d0e1f
Path: /work/main/test/fixtures/webui/migrations/versions/1b8c9d0e1f2a_user_settings_and_chat_index.py

    Add user settings and chat user/updated index
    
    Revision ID: 1b8c9d0e1f2a
    Revises: 0a7b8c9d0e1f
    Create Date: 2025-01-15 09:00:00.000000

`,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
`,
  },
  // current -v on PostgreSQL at e5f4a3b2c1d0 (URL password "pw%d", masked by alembic 1.8 as XXXXX)
  "pg-current-v": {
    exit: 0,
    stdout: `Current revision(s) for postgresql://postgres:XXXXX@127.0.0.1:5432/alrec_pg:
Rev: e5f4a3b2c1d0
Parent: d4c3b2a1e5f6
Path: /work/main/test/fixtures/webui/migrations/versions/e5f4a3b2c1d0_add_message_indexes.py

    Add message indexes
    
    Revision ID: e5f4a3b2c1d0
    Revises: d4c3b2a1e5f6
    Create Date: 2024-10-01 09:00:00.000000

`,
    stderr: `INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.
INFO  [alembic.runtime.migration] Will assume transactional DDL.
`,
  },
  // upgrade e5f4a3b2c1d0 on a fresh SQLite file (revision 4 logs progress)
  up5: {
    exit: 0,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade  -> a1f0c0de0001, init
INFO  [alembic.runtime.migration] Running upgrade a1f0c0de0001 -> b2e1d0c0ffee, Add message and config tables
INFO  [alembic.runtime.migration] Running upgrade b2e1d0c0ffee -> c3d2e1f00d42, Add reply_to_id column to message
INFO  [alembic.runtime.migration] Running upgrade c3d2e1f00d42 -> d4c3b2a1e5f6, Add chat pinned and meta, backfill tags from chat JSON
INFO  [fixapp.migrate] chat meta backfill: 0/0 rows
INFO  [alembic.runtime.migration] Running upgrade d4c3b2a1e5f6 -> e5f4a3b2c1d0, Add message indexes
`,
  },
  // stamp e5f4a3b2c1d0 on an empty database
  "stamp-empty": {
    exit: 0,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running stamp_revision  -> e5f4a3b2c1d0
`,
  },
  // downgrade base from b2e1d0c0ffee
  "downgrade-base": {
    exit: 0,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running downgrade b2e1d0c0ffee -> a1f0c0de0001, Add message and config tables
INFO  [alembic.runtime.migration] Running downgrade a1f0c0de0001 -> , init
`,
  },
  // history -c alembic-branch.ini
  "branch-history": {
    exit: 0,
    stdout: `0a7b8c9d0e1f -> 1b8c9d0e1f2a (head), Add user settings and chat user/updated index
f6a5b4c3d2e1 -> 0a7b8c9d0e1f, Add chat archived_at and shared_chat table
e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required and unique
e5f4a3b2c1d0 -> 9c9c9c9c9c9c (head), Add side table (side branch)
d4c3b2a1e5f6 -> e5f4a3b2c1d0 (branchpoint), Add message indexes
c3d2e1f00d42 -> d4c3b2a1e5f6, Add chat pinned and meta, backfill tags from chat JSON
b2e1d0c0ffee -> c3d2e1f00d42, Add reply_to_id column to message
a1f0c0de0001 -> b2e1d0c0ffee, Add message and config tables
<base> -> a1f0c0de0001, init
`,
    stderr: ``,
  },
  // heads -c alembic-branch.ini
  "branch-heads": {
    exit: 0,
    stdout: `1b8c9d0e1f2a (head)
9c9c9c9c9c9c (head)
`,
    stderr: ``,
  },
  // upgrade head -c alembic-branch.ini
  "branch-multi": {
    exit: 255,
    stdout: `FAILED: Multiple head revisions are present for given argument 'head'; please specify a specific target revision, '<branchname>@head' to narrow to a specific head, or 'heads' for all heads
`,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
ERROR [alembic.util.messaging] Multiple head revisions are present for given argument 'head'; please specify a specific target revision, '<branchname>@head' to narrow to a specific head, or 'heads' for all heads
`,
  },
  // upgrade heads -c alembic-branch.ini on a fresh SQLite file
  "branch-upheads": {
    exit: 0,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade  -> a1f0c0de0001, init
INFO  [alembic.runtime.migration] Running upgrade a1f0c0de0001 -> b2e1d0c0ffee, Add message and config tables
INFO  [alembic.runtime.migration] Running upgrade b2e1d0c0ffee -> c3d2e1f00d42, Add reply_to_id column to message
INFO  [alembic.runtime.migration] Running upgrade c3d2e1f00d42 -> d4c3b2a1e5f6, Add chat pinned and meta, backfill tags from chat JSON
INFO  [fixapp.migrate] chat meta backfill: 0/0 rows
INFO  [alembic.runtime.migration] Running upgrade d4c3b2a1e5f6 -> e5f4a3b2c1d0, Add message indexes
INFO  [alembic.runtime.migration] Running upgrade e5f4a3b2c1d0 -> 9c9c9c9c9c9c, Add side table (side branch)
INFO  [alembic.runtime.migration] Running upgrade e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required and unique
INFO  [alembic.runtime.migration] Running upgrade f6a5b4c3d2e1 -> 0a7b8c9d0e1f, Add chat archived_at and shared_chat table
INFO  [alembic.runtime.migration] Running upgrade 0a7b8c9d0e1f -> 1b8c9d0e1f2a, Add user settings and chat user/updated index
`,
  },
  // current after the above
  "branch-current": {
    exit: 0,
    stdout: `9c9c9c9c9c9c (head)
1b8c9d0e1f2a (head)
`,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
`,
  },
  // downgrade d4c3b2a1e5f6 from both heads
  "branch-down": {
    exit: 0,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running downgrade 1b8c9d0e1f2a -> 0a7b8c9d0e1f, Add user settings and chat user/updated index
INFO  [alembic.runtime.migration] Running downgrade 0a7b8c9d0e1f -> f6a5b4c3d2e1, Add chat archived_at and shared_chat table
INFO  [alembic.runtime.migration] Running downgrade f6a5b4c3d2e1 -> e5f4a3b2c1d0, Make user email required and unique
INFO  [alembic.runtime.migration] Running downgrade 9c9c9c9c9c9c -> e5f4a3b2c1d0, Add side table (side branch)
INFO  [alembic.runtime.migration] Running downgrade e5f4a3b2c1d0 -> d4c3b2a1e5f6, Add message indexes
`,
  },
  // history after `alembic merge -m "merge heads" --rev-id 7d7d7d7d7d7d heads` (copy of the fixture)
  "merge-history": {
    exit: 0,
    stdout: `1b8c9d0e1f2a, 9c9c9c9c9c9c -> 7d7d7d7d7d7d (head) (mergepoint), merge heads
0a7b8c9d0e1f -> 1b8c9d0e1f2a, Add user settings and chat user/updated index
f6a5b4c3d2e1 -> 0a7b8c9d0e1f, Add chat archived_at and shared_chat table
e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required and unique
e5f4a3b2c1d0 -> 9c9c9c9c9c9c, Add side table (side branch)
d4c3b2a1e5f6 -> e5f4a3b2c1d0 (branchpoint), Add message indexes
c3d2e1f00d42 -> d4c3b2a1e5f6, Add chat pinned and meta, backfill tags from chat JSON
b2e1d0c0ffee -> c3d2e1f00d42, Add reply_to_id column to message
a1f0c0de0001 -> b2e1d0c0ffee, Add message and config tables
<base> -> a1f0c0de0001, init
`,
    stderr: ``,
  },
  // upgrade heads through the merge revision
  "merge-upgrade": {
    exit: 0,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade  -> a1f0c0de0001, init
INFO  [alembic.runtime.migration] Running upgrade a1f0c0de0001 -> b2e1d0c0ffee, Add message and config tables
INFO  [alembic.runtime.migration] Running upgrade b2e1d0c0ffee -> c3d2e1f00d42, Add reply_to_id column to message
INFO  [alembic.runtime.migration] Running upgrade c3d2e1f00d42 -> d4c3b2a1e5f6, Add chat pinned and meta, backfill tags from chat JSON
INFO  [fixapp.migrate] chat meta backfill: 0/0 rows
INFO  [alembic.runtime.migration] Running upgrade d4c3b2a1e5f6 -> e5f4a3b2c1d0, Add message indexes
INFO  [alembic.runtime.migration] Running upgrade e5f4a3b2c1d0 -> 9c9c9c9c9c9c, Add side table (side branch)
INFO  [alembic.runtime.migration] Running upgrade e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required and unique
INFO  [alembic.runtime.migration] Running upgrade f6a5b4c3d2e1 -> 0a7b8c9d0e1f, Add chat archived_at and shared_chat table
INFO  [alembic.runtime.migration] Running upgrade 0a7b8c9d0e1f -> 1b8c9d0e1f2a, Add user settings and chat user/updated index
INFO  [alembic.runtime.migration] Running upgrade 1b8c9d0e1f2a, 9c9c9c9c9c9c -> 7d7d7d7d7d7d, merge heads
`,
  },
  // current at the merge revision
  "merge-current": {
    exit: 0,
    stdout: `7d7d7d7d7d7d (head) (mergepoint)
`,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
`,
  },
  // current -v at the merge revision
  "merge-current-v": {
    exit: 0,
    stdout: `Current revision(s) for sqlite:////tmp/rec/m3.db:
Rev: 7d7d7d7d7d7d (head) (mergepoint)
Merges: 1b8c9d0e1f2a, 9c9c9c9c9c9c
Path: /tmp/fixture-copy/migrations/versions/7d7d7d7d7d7d_merge_heads.py

    merge heads
    
    Revision ID: 7d7d7d7d7d7d
    Revises: 1b8c9d0e1f2a, 9c9c9c9c9c9c
    Create Date: 2026-11-25 17:19:48.763001

`,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
`,
  },
  // downgrade 0a7b8c9d0e1f from the merge revision
  "merge-downgrade": {
    exit: 0,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running downgrade 7d7d7d7d7d7d -> 1b8c9d0e1f2a, 9c9c9c9c9c9c, merge heads
INFO  [alembic.runtime.migration] Running downgrade 1b8c9d0e1f2a -> 0a7b8c9d0e1f, Add user settings and chat user/updated index
`,
  },
  // current without WEBUI_SECRET_KEY
  "missing-secret": {
    exit: 1,
    stdout: ``,
    stderr: `Traceback (most recent call last):
  …
  File "/work/main/test/fixtures/webui/migrations/env.py", line 19, in <module>
    from fixapp import settings
  File "/work/main/test/fixtures/webui/fixapp/settings.py", line 30, in <module>
    raise MissingEnvValueError(ENV_VAR_NOT_FOUND)
fixapp.settings.MissingEnvValueError: Required environment variable not found. Terminating now.
`,
  },
  // history without WEBUI_SECRET_KEY
  "missing-secret-history": {
    exit: 1,
    stdout: ``,
    stderr: `Traceback (most recent call last):
  …
  File "/work/main/test/fixtures/webui/fixapp/migrate.py", line 7, in <module>
    from fixapp import settings
  File "/work/main/test/fixtures/webui/fixapp/settings.py", line 30, in <module>
    raise MissingEnvValueError(ENV_VAR_NOT_FOUND)
fixapp.settings.MissingEnvValueError: Required environment variable not found. Terminating now.
`,
  },
  // current run outside the fixture folder
  "no-config": {
    exit: 255,
    stdout: `FAILED: No config file 'alembic.ini' found, or file has no '[alembic]' section
`,
    stderr: ``,
  },
  // current with alembic_version = '9f0c9cd09105'
  "unknown-current": {
    exit: 255,
    stdout: `FAILED: Can't locate revision identified by '9f0c9cd09105'
`,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
ERROR [alembic.util.messaging] Can't locate revision identified by '9f0c9cd09105'
`,
  },
  // stamp c3d2e1f00d42 with alembic_version = '9f0c9cd09105'
  "unknown-stamp": {
    exit: 255,
    stdout: `FAILED: Can't locate revision identified by '9f0c9cd09105'
`,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
ERROR [alembic.util.messaging] Can't locate revision identified by '9f0c9cd09105'
`,
  },
  // upgrade head --sql (SQLite; SQL shortened)
  "offline-head": {
    exit: 255,
    stdout: `CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL, 
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

-- Running upgrade  -> a1f0c0de0001

…
-- Running upgrade e5f4a3b2c1d0 -> f6a5b4c3d2e1

FAILED: This operation cannot proceed in --sql mode; batch mode with dialect sqlite requires a live database connection with which to reflect the table "user". To generate a batch SQL migration script using table "move and copy", a complete Table object should be passed to the "copy_from" argument of the batch_alter_table() method so that table reflection can be skipped.
`,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Generating static SQL
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade  -> a1f0c0de0001, init
INFO  [alembic.runtime.migration] Running upgrade a1f0c0de0001 -> b2e1d0c0ffee, Add message and config tables
INFO  [alembic.runtime.migration] Running upgrade b2e1d0c0ffee -> c3d2e1f00d42, Add reply_to_id column to message
INFO  [alembic.runtime.migration] Running upgrade c3d2e1f00d42 -> d4c3b2a1e5f6, Add chat pinned and meta, backfill tags from chat JSON
INFO  [alembic.runtime.migration] Running upgrade d4c3b2a1e5f6 -> e5f4a3b2c1d0, Add message indexes
INFO  [alembic.runtime.migration] Running upgrade e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required and unique
ERROR [alembic.util.messaging] This operation cannot proceed in --sql mode; batch mode with dialect sqlite requires a live database connection with which to reflect the table "user". To generate a batch SQL migration script using table "move and copy", a complete Table object should be passed to the "copy_from" argument of the batch_alter_table() method so that table reflection can be skipped.
`,
  },
  // upgrade a1f0c0de0001 --sql with FIXTURE_OFFLINE_GUARD=off
  "offline-noguard": {
    exit: 1,
    stdout: `CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL, 
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

-- Running upgrade  -> a1f0c0de0001

`,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Generating static SQL
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade  -> a1f0c0de0001, init
Traceback (most recent call last):
  …
    self._init_engine(bind)
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/reflection.py", line 128, in _init_engine
    engine.connect().close()
    ^^^^^^^^^^^^^^^^^^^^^^
AttributeError: 'MockConnection' object has no attribute 'close'
`,
  },
  // check (absent in 1.8)
  check: {
    exit: 2,
    stdout: ``,
    stderr: `usage: alembic [-h] [--version] [-c CONFIG] [-n NAME] [-x X] [--raiseerr]
               {branches,current,downgrade,edit,ensure_version,heads,history,init,list_templates,merge,revision,show,stamp,upgrade}
               ...
alembic: error: argument {branches,current,downgrade,edit,ensure_version,heads,history,init,list_templates,merge,revision,show,stamp,upgrade}: invalid choice: 'check' (choose from 'branches', 'current', 'downgrade', 'edit', 'ensure_version', 'heads', 'history', 'init', 'list_templates', 'merge', 'revision', 'show', 'stamp', 'upgrade')
`,
  },
  // upgrade f6a5b4c3d2e1 with duplicate emails (SQLite)
  "batch-fail": {
    exit: 1,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required and unique
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlite3.IntegrityError: UNIQUE constraint failed: _alembic_tmp_user.email

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  …
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlalchemy.exc.IntegrityError: (sqlite3.IntegrityError) UNIQUE constraint failed: _alembic_tmp_user.email
[SQL: INSERT INTO _alembic_tmp_user (id, name, email, role, created_at) SELECT user.id, user.name, user.email, user.role, user.created_at 
FROM user]
(Background on this error at: https://sqlalche.me/e/14/gkpj)
`,
  },
  // retry of the above
  "batch-retry": {
    exit: 1,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required and unique
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlite3.OperationalError: table _alembic_tmp_user already exists

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  …
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) table _alembic_tmp_user already exists
[SQL: 
CREATE TABLE _alembic_tmp_user (
	id VARCHAR NOT NULL, 
	name VARCHAR, 
	email VARCHAR COLLATE "NOCASE" NOT NULL, 
	role VARCHAR, 
	created_at BIGINT, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_user_email UNIQUE (email)
)

]
(Background on this error at: https://sqlalche.me/e/14/e3q8)
`,
  },
  // upgrade f6a5b4c3d2e1 while another process holds BEGIN EXCLUSIVE (SQLite)
  locked: {
    exit: 1,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlite3.OperationalError: database is locked

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  …
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked
[SQL: PRAGMA main.table_info("alembic_version")]
(Background on this error at: https://sqlalche.me/e/14/e3q8)
`,
  },
  // upgrade f6a5b4c3d2e1 with PGOPTIONS='-c lock_timeout=2000' and an open reader on "user"
  "pg-lock": {
    exit: 1,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.
INFO  [alembic.runtime.migration] Will assume transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required and unique
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
psycopg2.errors.LockNotAvailable: canceling statement due to lock timeout


The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  …
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlalchemy.exc.OperationalError: (psycopg2.errors.LockNotAvailable) canceling statement due to lock timeout

[SQL: ALTER TABLE "user" ALTER COLUMN email SET NOT NULL]
(Background on this error at: https://sqlalche.me/e/14/e3q8)
`,
  },
  // loser of three simultaneous upgrade head on a fresh PostgreSQL database
  "pg-race-loser": {
    exit: 1,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.
INFO  [alembic.runtime.migration] Will assume transactional DDL.
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
psycopg2.errors.UniqueViolation: duplicate key value violates unique constraint "pg_type_typname_nsp_index"
DETAIL:  Key (typname, typnamespace)=(alembic_version, 2200) already exists.


The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  …
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlalchemy.exc.IntegrityError: (psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "pg_type_typname_nsp_index"
DETAIL:  Key (typname, typnamespace)=(alembic_version, 2200) already exists.

[SQL: 
CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
)

]
(Background on this error at: https://sqlalche.me/e/14/gkpj)
`,
  },
  // loser of two simultaneous upgrade head on SQLite with an empty pre-created alembic_version
  "sqlite-race-version": {
    exit: 1,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade  -> a1f0c0de0001, init
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlite3.IntegrityError: UNIQUE constraint failed: alembic_version.version_num

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  …
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlalchemy.exc.IntegrityError: (sqlite3.IntegrityError) UNIQUE constraint failed: alembic_version.version_num
[SQL: INSERT INTO alembic_version (version_num) VALUES ('a1f0c0de0001')]
(Background on this error at: https://sqlalche.me/e/14/gkpj)
`,
  },
  // another loser of the same race
  "sqlite-race-table": {
    exit: 1,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade  -> a1f0c0de0001, init
INFO  [alembic.runtime.migration] Running upgrade a1f0c0de0001 -> b2e1d0c0ffee, Add message and config tables
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlite3.OperationalError: table message already exists

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  …
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) table message already exists
[SQL: 
CREATE TABLE message (
	id VARCHAR NOT NULL, 
	chat_id VARCHAR NOT NULL, 
	user_id VARCHAR, 
	content TEXT, 
	created_at BIGINT, 
	PRIMARY KEY (id)
)

]
(Background on this error at: https://sqlalche.me/e/14/e3q8)
`,
  },
  // upgrade head on PostgreSQL when shared_chat already exists
  "pg-dup": {
    exit: 1,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.
INFO  [alembic.runtime.migration] Will assume transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade f6a5b4c3d2e1 -> 0a7b8c9d0e1f, Add chat archived_at and shared_chat table
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
psycopg2.errors.DuplicateTable: relation "shared_chat" already exists


The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  …
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlalchemy.exc.ProgrammingError: (psycopg2.errors.DuplicateTable) relation "shared_chat" already exists

[SQL: 
CREATE TABLE shared_chat (
	id VARCHAR NOT NULL, 
	chat_id VARCHAR NOT NULL, 
	created_at BIGINT, 
	PRIMARY KEY (id)
)

]
(Background on this error at: https://sqlalche.me/e/14/f405)
`,
  },
  // upgrade head on PostgreSQL when chat.archived_at already exists
  "pg-dupcol": {
    exit: 1,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.
INFO  [alembic.runtime.migration] Will assume transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade f6a5b4c3d2e1 -> 0a7b8c9d0e1f, Add chat archived_at and shared_chat table
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
psycopg2.errors.DuplicateColumn: column "archived_at" of relation "chat" already exists


The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  …
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlalchemy.exc.ProgrammingError: (psycopg2.errors.DuplicateColumn) column "archived_at" of relation "chat" already exists

[SQL: ALTER TABLE chat ADD COLUMN archived_at BIGINT]
(Background on this error at: https://sqlalche.me/e/14/f405)
`,
  },
  // upgrade head from c3d2e1f00d42 on PostgreSQL with FIXTURE_FAIL_AT=0a7b8c9d0e1f
  "pg-failat": {
    exit: 1,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.
INFO  [alembic.runtime.migration] Will assume transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade c3d2e1f00d42 -> d4c3b2a1e5f6, Add chat pinned and meta, backfill tags from chat JSON
INFO  [fixapp.migrate] chat meta backfill: 0/0 rows
INFO  [alembic.runtime.migration] Running upgrade d4c3b2a1e5f6 -> e5f4a3b2c1d0, Add message indexes
INFO  [alembic.runtime.migration] Running upgrade e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required and unique
INFO  [alembic.runtime.migration] Running upgrade f6a5b4c3d2e1 -> 0a7b8c9d0e1f, Add chat archived_at and shared_chat table
Traceback (most recent call last):
  …
  File "/work/main/test/fixtures/webui/migrations/versions/0a7b8c9d0e1f_chat_archived_at_and_shared_chat.py", line 29, in upgrade
    fail_point(revision)
  File "/work/main/test/fixtures/webui/fixapp/migrate.py", line 20, in fail_point
    raise RuntimeError(
RuntimeError: simulated failure after DDL in revision 0a7b8c9d0e1f (FIXTURE_FAIL_AT=0a7b8c9d0e1f)
`,
  },
  // upgrade head on PostgreSQL with duplicate emails
  "pg-uniq": {
    exit: 1,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.
INFO  [alembic.runtime.migration] Will assume transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade c3d2e1f00d42 -> d4c3b2a1e5f6, Add chat pinned and meta, backfill tags from chat JSON
INFO  [fixapp.migrate] chat meta backfill: 0/0 rows
INFO  [alembic.runtime.migration] Running upgrade d4c3b2a1e5f6 -> e5f4a3b2c1d0, Add message indexes
INFO  [alembic.runtime.migration] Running upgrade e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required and unique
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
psycopg2.errors.UniqueViolation: could not create unique index "uq_user_email"
DETAIL:  Key (email)=(a@x) is duplicated.


The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  …
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlalchemy.exc.IntegrityError: (psycopg2.errors.UniqueViolation) could not create unique index "uq_user_email"
DETAIL:  Key (email)=(a@x) is duplicated.

[SQL: ALTER TABLE "user" ADD CONSTRAINT uq_user_email UNIQUE (email)]
(Background on this error at: https://sqlalche.me/e/14/gkpj)
`,
  },
  // current -x txn=bogus
  "bad-x": {
    exit: 1,
    stdout: ``,
    stderr: `Traceback (most recent call last):
  …
  File "<frozen importlib._bootstrap_external>", line 940, in exec_module
  File "<frozen importlib._bootstrap>", line 241, in _call_with_frames_removed
  File "/work/main/test/fixtures/webui/migrations/env.py", line 35, in <module>
    raise ValueError(f"unknown txn mode {TXN_MODE!r} (expected 'single' or 'per-migration')")
ValueError: unknown txn mode 'bogus' (expected 'single' or 'per-migration')
`,
  },
  // upgrade head from f6a5b4c3d2e1 with FIXTURE_FAIL_AT=0a7b8c9d0e1f (SQLite)
  "sqlite-failat": {
    exit: 1,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade f6a5b4c3d2e1 -> 0a7b8c9d0e1f, Add chat archived_at and shared_chat table
Traceback (most recent call last):
  …
  File "/work/main/test/fixtures/webui/migrations/versions/0a7b8c9d0e1f_chat_archived_at_and_shared_chat.py", line 29, in upgrade
    fail_point(revision)
  File "/work/main/test/fixtures/webui/fixapp/migrate.py", line 20, in fail_point
    raise RuntimeError(
RuntimeError: simulated failure after DDL in revision 0a7b8c9d0e1f (FIXTURE_FAIL_AT=0a7b8c9d0e1f)
`,
  },
  // retry of the above without the knob
  "sqlite-dupcol": {
    exit: 1,
    stdout: ``,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade f6a5b4c3d2e1 -> 0a7b8c9d0e1f, Add chat archived_at and shared_chat table
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlite3.OperationalError: duplicate column name: archived_at

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  …
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/base.py", line 1900, in _execute_context
    self.dialect.do_execute(
  File "/usr/lib/python3/dist-packages/sqlalchemy/engine/default.py", line 736, in do_execute
    cursor.execute(statement, parameters)
sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) duplicate column name: archived_at
[SQL: ALTER TABLE chat ADD COLUMN archived_at BIGINT]
(Background on this error at: https://sqlalche.me/e/14/e3q8)
`,
  },
  // downgrade 1b8c9d0e1f2a from f6a5b4c3d2e1
  "downgrade-invalid": {
    exit: 255,
    stdout: `FAILED: Destination 1b8c9d0e1f2a is not a valid downgrade target from current head(s)
`,
    stderr: `INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
ERROR [alembic.util.messaging] Destination 1b8c9d0e1f2a is not a valid downgrade target from current head(s)
`,
  },
} as const;

type Rec = { readonly exit: number; readonly stdout: string; readonly stderr: string };
const classify = (r: Rec, ending?: RunEnding) => classifyFailure(r.exit, r.stdout, r.stderr, ending);

describe("parseCurrent / parseHeads", () => {
  it("reads the head marker of alembic current", () => {
    assert.deepEqual(parseCurrent(REC["happy-current"].stdout), ["1b8c9d0e1f2a"]);
  });
  it("gives [] for a fresh database (current prints nothing)", () => {
    assert.deepEqual(parseCurrent(""), []);
    assert.deepEqual(parseCurrent("\n"), []);
  });
  it("reads two applied heads", () => {
    assert.deepEqual(parseCurrent(REC["branch-current"].stdout), ["9c9c9c9c9c9c", "1b8c9d0e1f2a"]);
    assert.deepEqual(parseHeads(REC["branch-heads"].stdout), ["1b8c9d0e1f2a", "9c9c9c9c9c9c"]);
  });
  it("reads ' (head) (mergepoint)' and '(branchpoint)' markers", () => {
    assert.deepEqual(parseCurrent(REC["merge-current"].stdout), ["7d7d7d7d7d7d"]);
    assert.deepEqual(parseCurrent("e5f4a3b2c1d0 (branchpoint)\n"), ["e5f4a3b2c1d0"]);
    assert.deepEqual(parseCurrent("c3d2e1f00d42\n"), ["c3d2e1f00d42"]);
  });
  it("reads newer markers: (effective head), (current), branch labels", () => {
    assert.deepEqual(parseCurrent("ab12cd34ef56 (effective head)\n"), ["ab12cd34ef56"]);
    assert.deepEqual(parseCurrent("ab12cd34ef56 (mybranch) (head) (current)\n"), ["ab12cd34ef56"]);
  });
  it("reads current -v blocks and ignores the header with its masked password (1.8 XXXXX, newer ***)", () => {
    assert.deepEqual(parseCurrent(REC["cur-v"].stdout), ["1b8c9d0e1f2a"]);
    assert.deepEqual(parseCurrent(REC["pg-current-v"].stdout), ["e5f4a3b2c1d0"]);
    assert.match(REC["pg-current-v"].stdout, /postgres:XXXXX@/);
    const newer = REC["pg-current-v"].stdout.replace("XXXXX", "***");
    assert.deepEqual(parseCurrent(newer), ["e5f4a3b2c1d0"]);
    assert.deepEqual(parseCurrent(REC["merge-current-v"].stdout), ["7d7d7d7d7d7d"]);
    assert.deepEqual(parseCurrent("Current revision(s) for postgresql://u:***@db/x:\n"), []);
  });
  it("strips ANSI colour codes", () => {
    assert.deepEqual(parseCurrent("\u001b[32m1b8c9d0e1f2a (head)\u001b[0m\n"), ["1b8c9d0e1f2a"]);
  });
});

describe("parseHistory", () => {
  it("reads the linear fixture history, newest first, root from <base>", () => {
    const revs = parseHistory(REC["happy-history"].stdout);
    assert.equal(revs.length, 8);
    assert.deepEqual(
      revs.map((r) => r.id),
      ["1b8c9d0e1f2a", "0a7b8c9d0e1f", "f6a5b4c3d2e1", "e5f4a3b2c1d0", "d4c3b2a1e5f6", "c3d2e1f00d42", "b2e1d0c0ffee", "a1f0c0de0001"],
    );
    const root = revs[7]!;
    assert.deepEqual(root.down, []);
    assert.equal(root.message, "init");
    const head = revs[0]!;
    assert.equal(head.isHead, true);
    assert.deepEqual(head.down, ["0a7b8c9d0e1f"]);
    assert.equal(head.message, "Add user settings and chat user/updated index");
    assert.equal(revs.filter((r) => r.isHead).length, 1);
    assert.equal(revs[4]!.message, "Add chat pinned and meta, backfill tags from chat JSON");
  });
  it("reads a branch point and two heads", () => {
    const revs = parseHistory(REC["branch-history"].stdout);
    assert.equal(revs.length, 9);
    const bp = revs.find((r) => r.id === "e5f4a3b2c1d0")!;
    assert.equal(bp.isBranchpoint, true);
    assert.equal(bp.isHead, false);
    assert.deepEqual(
      revs.filter((r) => r.isHead).map((r) => r.id),
      ["1b8c9d0e1f2a", "9c9c9c9c9c9c"],
    );
  });
  it("reads a merge line 'a, b -> m (head) (mergepoint), msg'", () => {
    const revs = parseHistory(REC["merge-history"].stdout);
    const m = revs[0]!;
    assert.equal(m.id, "7d7d7d7d7d7d");
    assert.deepEqual(m.down, ["1b8c9d0e1f2a", "9c9c9c9c9c9c"]);
    assert.equal(m.isMergepoint, true);
    assert.equal(m.isHead, true);
    assert.equal(m.message, "merge heads");
    assert.equal(revs.find((r) => r.id === "1b8c9d0e1f2a")!.isHead, false);
  });
  it("reads newer-version variants: labels, depends_on, (effective head), empty and wrapped messages", () => {
    const revs = parseHistory(
      [
        "\u001b[1mab12cd34ef56 (feature) -> cd34ef56ab12 (feature, other) (effective head) (current), Add x, y",
        "<base> (0f0f0f0f0f0f) -> ab12cd34ef56 (branchpoint), first line",
        "continued second line",
        "<base> -> 0f0f0f0f0f0f, ",
      ].join("\n"),
    );
    assert.equal(revs.length, 3);
    assert.deepEqual(revs[0]!.branchLabels, ["feature", "other"]);
    assert.equal(revs[0]!.isHead, true);
    assert.deepEqual(revs[0]!.down, ["ab12cd34ef56"]);
    assert.equal(revs[0]!.message, "Add x, y");
    assert.deepEqual(revs[1]!.dependsOn, ["0f0f0f0f0f0f"]);
    assert.deepEqual(revs[1]!.down, []);
    assert.equal(revs[1]!.message, "first line continued second line");
    assert.equal(revs[2]!.message, "");
  });
});

describe("parseRunningLines", () => {
  it("reads every upgrade step, the first with an empty 'from' (two spaces)", () => {
    const steps = parseRunningLines(REC["happy"].stderr);
    assert.equal(steps.length, 8);
    assert.deepEqual(steps[0], { direction: "upgrade", from: [], to: "a1f0c0de0001", toAll: ["a1f0c0de0001"], message: "init" });
    assert.deepEqual(steps[7]!.from, ["0a7b8c9d0e1f"]);
    assert.equal(steps[7]!.to, "1b8c9d0e1f2a");
    assert.equal(steps[3]!.message, "Add chat pinned and meta, backfill tags from chat JSON");
  });
  it("ignores other log lines (revision progress, context lines)", () => {
    const steps = parseRunningLines(REC["up5"].stderr);
    assert.deepEqual(
      steps.map((s) => s.to),
      ["a1f0c0de0001", "b2e1d0c0ffee", "c3d2e1f00d42", "d4c3b2a1e5f6", "e5f4a3b2c1d0"],
    );
    assert.equal(parseRunningLine("INFO  [fixapp.migrate] chat meta backfill: 0/0 rows"), null);
  });
  it("reads a merge step 'a, b -> m' and a downgrade out of a merge 'm -> a, b, msg'", () => {
    const up = parseRunningLines(REC["merge-upgrade"].stderr).at(-1)!;
    assert.deepEqual(up.from, ["1b8c9d0e1f2a", "9c9c9c9c9c9c"]);
    assert.equal(up.to, "7d7d7d7d7d7d");
    assert.equal(up.message, "merge heads");
    const down = parseRunningLines(REC["merge-downgrade"].stderr);
    assert.equal(down[0]!.direction, "downgrade");
    assert.deepEqual(down[0]!.toAll, ["1b8c9d0e1f2a", "9c9c9c9c9c9c"]);
    assert.equal(down[0]!.to, "1b8c9d0e1f2a");
    assert.equal(down[0]!.message, "merge heads");
    const known = new Set(["7d7d7d7d7d7d", "1b8c9d0e1f2a", "9c9c9c9c9c9c"]);
    assert.deepEqual(parseRunningLine("Running downgrade 7d7d7d7d7d7d -> 1b8c9d0e1f2a, 9c9c9c9c9c9c", known)!.toAll, ["1b8c9d0e1f2a", "9c9c9c9c9c9c"]);
  });
  it("reads a downgrade to base ('a1f0c0de0001 -> , init')", () => {
    const steps = parseRunningLines(REC["downgrade-base"].stderr);
    assert.equal(steps.length, 2);
    assert.deepEqual(steps[1], { direction: "downgrade", from: ["a1f0c0de0001"], to: "base", toAll: [], message: "init" });
  });
  it("reads stamp_revision steps, from empty and to base", () => {
    assert.deepEqual(parseRunningLines(REC["stamp-empty"].stderr), [
      { direction: "stamp", from: [], to: "e5f4a3b2c1d0", toAll: ["e5f4a3b2c1d0"], message: "" },
    ]);
    assert.deepEqual(parseRunningLine("INFO  [alembic.runtime.migration] Running stamp_revision 1b8c9d0e1f2a -> "), {
      direction: "stamp",
      from: ["1b8c9d0e1f2a"],
      to: "base",
      toAll: [],
      message: "",
    });
  });
  it("reads the '-- Running' comments of --sql output and keeps commas in messages", () => {
    assert.equal(parseRunningLine("-- Running upgrade c3d2e1f00d42 -> d4c3b2a1e5f6")!.to, "d4c3b2a1e5f6");
    assert.equal(parseRunningLine("Running upgrade ab12cd34ef56 -> cd34ef56ab12, a, b -> c")!.message, "a, b -> c");
    assert.equal(parseRunningLine("\u001b[36mRunning upgrade  -> ab12cd34ef56, x\u001b[0m")!.to, "ab12cd34ef56");
    assert.equal(parseRunningLine("nothing to see"), null);
  });
});

describe("parseVersion, lastException, failedMessage", () => {
  it("reads alembic --version", () => {
    assert.equal(parseVersion("alembic 1.8.1\n"), "1.8.1");
    assert.equal(parseVersion("alembic 1.16.5"), "1.16.5");
    assert.equal(parseVersion("Python 3.11"), null);
  });
  it("takes the final exception of chained tracebacks, with DETAIL and SQL after it", () => {
    const e = lastException(REC["pg-race-loser"].stderr)!;
    assert.match(e.line, /^sqlalchemy\.exc\.IntegrityError: \(psycopg2\.errors\.UniqueViolation\)/);
    assert.match(e.block, /DETAIL: {2}Key \(typname, typnamespace\)=\(alembic_version, 2200\) already exists\./);
    assert.equal(lastException(REC["happy"].stderr), null);
  });
  it("reads the FAILED: line, even after SQL on stdout", () => {
    assert.match(failedMessage(REC["offline-head"].stdout, "")!, /^This operation cannot proceed in --sql mode/);
    assert.equal(failedMessage("", REC["unknown-current"].stderr), "Can't locate revision identified by '9f0c9cd09105'");
  });
});

describe("classifyFailure on recorded runs", () => {
  it("returns null for successful runs", () => {
    for (const name of ["happy", "happy-current", "stamp-empty", "merge-downgrade"] as const) {
      assert.equal(classify(REC[name]), null, name);
    }
  });

  const cases: Array<[keyof typeof REC, FailureKind, RegExp, boolean]> = [
    ["missing-secret", "env", /^fixapp\.settings\.MissingEnvValueError: Required environment variable not found\. Terminating now\.$/, false],
    ["missing-secret-history", "env", /Required environment variable not found/, false],
    ["no-config", "missing-config", /^No config file 'alembic\.ini' found, or file has no '\[alembic\]' section$/, false],
    ["unknown-current", "unknown-revision", /^Can't locate revision identified by '9f0c9cd09105'$/, false],
    ["unknown-stamp", "unknown-revision", /9f0c9cd09105/, false],
    ["branch-multi", "multiple-heads", /^Multiple head revisions are present for given argument 'head'/, false],
    ["offline-head", "offline-unsupported", /^This operation cannot proceed in --sql mode; batch mode with dialect sqlite/, false],
    ["offline-noguard", "offline-unsupported", /'MockConnection' object has no attribute 'close'/, false],
    ["check", "usage", /invalid choice: 'check'/, false],
    ["downgrade-invalid", "command-error", /^Destination 1b8c9d0e1f2a is not a valid downgrade target/, false],
    ["sqlite-failat", "partial-apply", /^RuntimeError: simulated failure after DDL in revision 0a7b8c9d0e1f/, true],
    ["sqlite-dupcol", "duplicate-object", /duplicate column name: archived_at$/, true],
    ["pg-dup", "duplicate-object", /DuplicateTable\) relation "shared_chat" already exists/, true],
    ["pg-dupcol", "duplicate-object", /DuplicateColumn\) column "archived_at" of relation "chat" already exists/, true],
    ["sqlite-race-table", "duplicate-object", /table message already exists/, true],
    ["batch-fail", "batch-leftover", /UNIQUE constraint failed: _alembic_tmp_user\.email$/, true],
    ["batch-retry", "batch-leftover", /table _alembic_tmp_user already exists$/, true],
    ["locked", "lock", /\(sqlite3\.OperationalError\) database is locked$/, false],
    ["pg-lock", "lock", /LockNotAvailable\) canceling statement due to lock timeout$/, false],
    ["pg-race-loser", "concurrent-runner", /pg_type_typname_nsp_index/, true],
    ["sqlite-race-version", "concurrent-runner", /UNIQUE constraint failed: alembic_version\.version_num$/, true],
    ["pg-uniq", "sql-error", /could not create unique index "uq_user_email"/, false],
    ["pg-failat", "unknown", /^RuntimeError: simulated failure after DDL/, false],
    ["bad-x", "unknown", /^ValueError: unknown txn mode 'bogus'/, true],
  ];
  for (const [name, kind, message, partial] of cases) {
    it(`${name} → ${kind}`, () => {
      const f = classify(REC[name]);
      assert.ok(f, `${name} must be a failure`);
      assert.equal(f.kind, kind);
      assert.match(f.message, message);
      assert.equal(f.changesMayBePartial, partial);
      assert.ok(f.hint.length > 20, "every failure carries a hint");
    });
  }

  it("gives distinct hints per kind", () => {
    const hints = new Set(cases.map(([name]) => classify(REC[name])!.hint));
    assert.equal(hints.size, new Set(cases.map(([, kind]) => kind)).size);
  });

  it("timeout and kill come from how the process ended", () => {
    // A run cut short in revision 4 of a SQLite upgrade: the tail of REC.up5.
    const partial = REC["up5"].stderr.split("\n").slice(0, 7).join("\n");
    const t = classifyFailure(null, "", partial, { timedOut: true, signal: "SIGTERM" });
    assert.equal(t?.kind, "timeout");
    assert.equal(t?.changesMayBePartial, true);
    assert.equal(classifyFailure(124, "", "", {})?.kind, "timeout");
    const k = classifyFailure(null, "", partial, { cancelled: true, signal: "SIGTERM" });
    assert.equal(k?.kind, "killed");
    assert.match(k!.message, /cancelled/);
    assert.equal(classifyFailure(null, "", "", { signal: "SIGKILL" })?.kind, "killed");
    // On PostgreSQL an interrupted transaction rolls back.
    const pg = REC["pg-lock"].stderr.split("\n").slice(0, 3).join("\n");
    assert.equal(classifyFailure(null, "", pg, { timedOut: true })?.changesMayBePartial, false);
  });

  it("a program that cannot start is an env problem", () => {
    const f = classifyFailure(null, "", "", { spawnError: "alembic: spawn alembic ENOENT" });
    assert.equal(f?.kind, "env");
    assert.match(f!.message, /ENOENT/);
  });

  it("alembic's concurrent-update CommandError is a concurrent runner", () => {
    // Text of alembic.runtime.migration's CommandError when alembic_version changed under it.
    const f = classifyFailure(
      255,
      "FAILED: Online migration expected to match one row when updating 'c3d2e1f00d42' to 'd4c3b2a1e5f6' in 'alembic_version'; 0 found\n",
      "",
    );
    assert.equal(f?.kind, "concurrent-runner");
    assert.equal(f?.changesMayBePartial, true);
  });

  it("reads output with ANSI colour codes", () => {
    const coloured = REC["locked"].stderr.replace(/database is locked/g, "\u001b[31mdatabase is locked\u001b[0m");
    assert.equal(classify({ ...REC["locked"], stderr: coloured })?.kind, "lock");
  });
});
