%% @doc The hello_erl application: an HTTP server (inets httpd) whose port, bind address and data
%% directory are read from the OS environment at boot.
-module(hello_erl_app).
-behaviour(application).

-export([start/2, stop/1]).

start(_Type, _Args) ->
    Config = hello_erl_web:httpd_config(),
    Result = hello_erl_sup:start_link(Config),
    logger:notice("hello_erl ~s listening on ~s:~p, os pid ~s",
                  [hello_erl_config:version(), hello_erl_config:bind(),
                   proplists:get_value(port, Config), os:getpid()]),
    Result.

stop(_State) ->
    ok.
