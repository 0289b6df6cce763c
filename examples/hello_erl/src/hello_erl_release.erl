%% @doc Release tasks, run in a fresh VM with the release's code on the path (the application is
%% loaded, never started):
%%
%%   hello_erl_release:migrate().   applies every migration 1..N not yet recorded, exactly once
%%   hello_erl_release:applied().   the numbers recorded as applied
-module(hello_erl_release).

-export([migrate/0, applied/0]).

migrate() ->
    Version = hello_erl_config:version(),
    Dir = hello_erl_config:data_dir(),
    Applied = hello_erl_store:with_writable(Dir, fun(Tab) ->
        [apply_one(Tab, Dir, N, Version)
         || N <- lists:seq(1, hello_erl_config:migrations()), dets:lookup(Tab, N) =:= []]
    end),
    case Applied of
        [] -> io:format("hello_erl ~s: no pending migrations (data dir ~s)~n", [Version, Dir]);
        _ -> io:format("hello_erl ~s: applied ~p migration(s) ~w~n", [Version, length(Applied), Applied])
    end,
    Applied.

apply_one(Tab, Dir, N, Version) ->
    Now = calendar:system_time_to_rfc3339(erlang:system_time(second), [{offset, "Z"}]),
    ok = dets:insert(Tab, {N, Now, Version}),
    ok = dets:sync(Tab),
    ok = file:write_file(hello_erl_store:log_path(Dir), io_lib:format("~b ~s~n", [N, Version]), [append]),
    io:format("hello_erl ~s: applied migration ~b~n", [Version, N]),
    N.

applied() ->
    case hello_erl_store:read(hello_erl_config:data_dir()) of
        {ok, Records} -> [element(1, R) || R <- Records];
        {error, Reason} -> erlang:error({cannot_read_migration_store, Reason})
    end.
