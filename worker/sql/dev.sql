-- Queries only `kubetasks dev` runs, one named block each: "-- name: why".

-- task_stats_by_schedule: the closing summary of `kubetasks dev`: counts per schedule ('-' for none) and state.
SELECT coalesce(schedule_name, '-') AS schedule, state::text AS state, count(*) AS n
FROM kubetasks.tasks
GROUP BY 1, 2
ORDER BY 1, 2;
