PRAGMA cache_size=-16000;
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, body BLOB, n INT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<20000)
INSERT INTO t(name, body, n) SELECT 'name' || x, randomblob(abs(random()) % 3000 + 100), x % 97 FROM c;
CREATE INDEX t_n ON t(n, name);
SELECT n, count(*), sum(length(body)) FROM t GROUP BY n ORDER BY 3 DESC LIMIT 5;
UPDATE t SET body = randomblob(abs(random()) % 6000) WHERE n < 30;
DELETE FROM t WHERE n % 3 = 0;
SELECT count(*), group_concat(substr(name,1,3)) IS NOT NULL FROM t WHERE name LIKE 'name1%';
VACUUM;
