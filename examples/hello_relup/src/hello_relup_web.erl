%% @doc The HTTP interface, an httpd callback module (reloaded by a hot upgrade):
%%   GET  /health       200 {"status":"ok","version":...,"generation":...,"os_pid":...}
%%   GET  /             "hello from hello_relup <vsn> (code generation <n>)\n"
%%   GET  /state        {"version":...,"generation":...,"os_pid":...,"state":{...the counter's state...}}
%%   POST /count/<name> {"name":...,"count":N}
-module(hello_relup_web).

-include_lib("inets/include/httpd.hrl").

-export([httpd_config/0, do/1, version/0]).

httpd_config() ->
    Bind = env("HELLO_BIND", "0.0.0.0"),
    Root = code:lib_dir(hello_relup),
    [{port, list_to_integer(env("HELLO_PORT", "4000"))},
     {bind_address, case Bind of "0.0.0.0" -> any; _ -> {ok, Ip} = inet:parse_address(Bind), Ip end},
     {server_name, "hello_relup"},
     {server_root, Root},
     {document_root, Root},
     {modules, [?MODULE]}].

env(Name, Default) ->
    case os:getenv(Name) of
        false -> Default;
        "" -> Default;
        Value -> Value
    end.

%% The running release's application vsn (release_handler updates it on a hot upgrade).
version() ->
    {ok, Vsn} = application:get_key(hello_relup, vsn),
    list_to_binary(Vsn).

do(#mod{method = Method, request_uri = Uri}) ->
    [Path | _] = string:split(Uri, "?"),
    {Code, Type, Body} =
        try route(Method, Path)
        catch Class:Reason ->
            logger:error("hello_relup: ~s ~s failed: ~p:~p", [Method, Path, Class, Reason]),
            {500, "application/json", <<"{\"status\":\"error\"}\n">>}
        end,
    Head = [{code, Code}, {content_type, Type}, {content_length, integer_to_list(iolist_size(Body))}],
    {proceed, [{response, {response, Head, Body}}]}.

route("GET", "/health") ->
    json(200, #{status => <<"ok">>, version => version(), generation => hello_relup_counter:generation(),
                os_pid => list_to_binary(os:getpid())});
route("GET", "/") ->
    {200, "text/plain; charset=utf-8",
     io_lib:format("hello from hello_relup ~s (code generation ~p)~n",
                   [version(), hello_relup_counter:generation()])};
route("GET", "/state") ->
    json(200, #{version => version(), generation => hello_relup_counter:generation(),
                os_pid => list_to_binary(os:getpid()), state => hello_relup_counter:snapshot()});
route("POST", "/count/" ++ Name) when Name =/= "" ->
    Key = list_to_binary(Name),
    json(200, #{name => Key, count => hello_relup_counter:incr(Key)});
route(_, _) ->
    json(404, #{status => <<"not found">>}).

json(Code, Term) -> {Code, "application/json", [to_json(Term), $\n]}.

%% JSON of maps (atom or binary keys), binaries, integers and atoms (as strings).
to_json(M) when is_map(M) ->
    [${, lists:join($,, [[to_json(key(K)), $:, to_json(V)] || {K, V} <- lists:sort(maps:to_list(M))]), $}];
to_json(N) when is_integer(N) -> integer_to_binary(N);
to_json(B) when is_binary(B) -> [$", [quote(C) || <<C>> <= B], $"];
to_json(A) when is_atom(A) -> to_json(atom_to_binary(A)).

key(K) when is_atom(K) -> atom_to_binary(K);
key(K) -> K.

quote($") -> <<"\\\"">>;
quote($\\) -> <<"\\\\">>;
quote(C) when C < 16#20 -> <<"?">>;
quote(C) -> <<C>>.
