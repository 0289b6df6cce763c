%% @doc The hello_relup application: a counter server and an HTTP server (inets httpd) whose port and
%% bind address are read from the OS environment at boot (HELLO_PORT, default 4000; HELLO_BIND,
%% default 0.0.0.0).
-module(hello_relup_app).
-behaviour(application).

-export([start/2, stop/1]).

start(_Type, _Args) ->
    Result = hello_relup_sup:start_link(hello_relup_web:httpd_config()),
    logger:notice("hello_relup ~s started, os pid ~s", [hello_relup_web:version(), os:getpid()]),
    Result.

stop(_State) ->
    ok.
