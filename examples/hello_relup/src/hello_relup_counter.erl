%% @doc A counter server whose state format changes between code generations:
%%
%%   generation 1 (1.0.x): {counts, #{Name => Count}}
%%   generation 2 (1.1.x): #{format => 2, counts => #{Name => Count}, total => Sum, converted_from => OldVsn}
%%
%% A hot upgrade converts the first into the second in code_change/3, without stopping the process; a
%% downgrade converts back (its {down, Vsn} clause runs in generation 2, before generation 1 is loaded).
-module(hello_relup_counter).
-behaviour(gen_server).

-ifdef(GEN2).
-vsn(2).
-else.
-vsn(1).
-endif.

-export([start_link/0, incr/1, snapshot/0, generation/0]).
-export([init/1, handle_call/3, handle_cast/2, code_change/3]).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% Count one more for Name (a binary); returns the new count.
incr(Name) -> gen_server:call(?MODULE, {incr, Name}).

%% The state as a map the HTTP interface shows.
snapshot() -> gen_server:call(?MODULE, snapshot).

-ifdef(GEN2).
generation() -> 2.

init([]) -> {ok, #{format => 2, counts => #{}, total => 0, converted_from => none}}.

handle_call({incr, Name}, _From, #{counts := Counts, total := Total} = State) ->
    N = maps:get(Name, Counts, 0) + 1,
    {reply, N, State#{counts := Counts#{Name => N}, total := Total + 1}};
handle_call(snapshot, _From, State) ->
    {reply, State, State}.

-ifdef(BAD_CODE_CHANGE).
code_change(_OldVsn, _State, _Extra) -> {error, deliberately_broken_code_change}.
-else.
%% Downgrade to generation 1: release_handler calls this (the running, newer code) before it loads the
%% older code, so the state must leave here in generation 1's format.
code_change({down, _Vsn}, #{counts := Counts}, _Extra) ->
    {ok, {counts, Counts}};
%% Upgrade from generation 1: the process keeps running, its state gains a format and a total.
code_change(OldVsn, {counts, Counts}, _Extra) ->
    {ok, #{format => 2, counts => Counts, total => lists:sum(maps:values(Counts)),
           converted_from => vsn_text(OldVsn)}};
code_change(_OldVsn, State, _Extra) ->
    {ok, State}.

vsn_text(Vsn) -> iolist_to_binary(io_lib:format("~p", [Vsn])).
-endif.
-else.
generation() -> 1.

init([]) -> {ok, {counts, #{}}}.

handle_call({incr, Name}, _From, {counts, Counts}) ->
    N = maps:get(Name, Counts, 0) + 1,
    {reply, N, {counts, Counts#{Name => N}}};
handle_call(snapshot, _From, {counts, Counts} = State) ->
    {reply, #{format => 1, counts => Counts}, State}.

code_change(_OldVsn, State, _Extra) ->
    {ok, State}.
-endif.

handle_cast(_Msg, State) ->
    {noreply, State}.
