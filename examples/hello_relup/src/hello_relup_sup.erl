%% @doc Supervises the counter server and the stand-alone httpd instance.
-module(hello_relup_sup).
-behaviour(supervisor).

-export([start_link/1, init/1]).

start_link(HttpdConfig) ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, HttpdConfig).

init(HttpdConfig) ->
    Counter = #{id => hello_relup_counter,
                start => {hello_relup_counter, start_link, []},
                modules => [hello_relup_counter]},
    Httpd = #{id => httpd, start => {inets, start, [httpd, HttpdConfig, stand_alone]}},
    {ok, {#{strategy => one_for_one, intensity => 3, period => 10}, [Counter, Httpd]}}.
