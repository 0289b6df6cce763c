%% @doc The migration store: a dets table $HELLO_DATA_DIR/hello_migrations.dets holding
%% {N, AppliedAtIso8601, ByVersion}, plus an append-only migrations.log ("N Version\n" per line).
%%
%% The table is only open for the duration of one call: the running node opens it read-only,
%% so a separate migration VM can write it while the node is up.
-module(hello_erl_store).

-export([path/1, log_path/1, read/1, with_writable/2]).

path(Dir) -> filename:join(Dir, "hello_migrations.dets").

log_path(Dir) -> filename:join(Dir, "migrations.log").

%% {ok, SortedRecords} ({ok, []} before the first migration) or {error, Reason}.
read(Dir) ->
    File = path(Dir),
    case filelib:is_regular(File) of
        false -> {ok, []};
        true -> read_existing(File, 5)
    end.

read_existing(File, Attempts) ->
    case dets:open_file(make_ref(), [{file, File}, {access, read}, {repair, false}]) of
        {ok, Tab} ->
            try {ok, lists:sort(dets:match_object(Tab, '_'))}
            after dets:close(Tab)
            end;
        {error, _} when Attempts > 1 ->
            timer:sleep(100),
            read_existing(File, Attempts - 1);
        {error, Reason} ->
            {error, Reason}
    end.

with_writable(Dir, Fun) ->
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    {ok, Tab} = dets:open_file(make_ref(), [{file, path(Dir)}, {type, set},
                                            {access, read_write}, {repair, true}]),
    try Fun(Tab)
    after ok = dets:close(Tab)
    end.
