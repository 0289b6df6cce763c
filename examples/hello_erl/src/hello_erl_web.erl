%% @doc The HTTP interface, an httpd callback module:
%%   GET /health  200 {"status":"ok","version":...,"migrations":[...],"os_pid":...,"node":...}
%%   GET /        "<greeting> from hello_erl <vsn>\n"
%%   GET /config  greeting, port, sha256 and byte length of HELLO_SECRET (never the secret)
-module(hello_erl_web).

-include_lib("inets/include/httpd.hrl").

-export([httpd_config/0, do/1]).

httpd_config() ->
    Root = code:priv_dir(hello_erl),
    Bind = hello_erl_config:bind(),
    [{port, hello_erl_config:port()},
     {bind_address, bind_address(Bind)},
     {ipfamily, case lists:member($:, Bind) of true -> inet6; false -> inet end},
     {server_name, "hello_erl"},
     {server_root, Root},
     {document_root, Root},
     {modules, [?MODULE]}].

bind_address("0.0.0.0") -> any;
bind_address(Address) ->
    {ok, Ip} = inet:parse_address(Address),
    Ip.

do(#mod{method = Method, request_uri = Uri}) ->
    [Path | _] = string:split(Uri, "?"),
    {Code, Type, Body} =
        try route(Method, Path)
        catch Class:Reason ->
            logger:error("hello_erl: ~s ~s failed: ~p:~p", [Method, Path, Class, Reason]),
            json(500, #{status => <<"error">>})
        end,
    Head = [{code, Code}, {content_type, Type}, {content_length, integer_to_list(iolist_size(Body))}],
    {proceed, [{response, {response, Head, Body}}]}.

route("GET", "/health") ->
    Migrations = case hello_erl_store:read(hello_erl_config:data_dir()) of
        {ok, Records} -> [element(1, R) || R <- Records];
        {error, _} -> []
    end,
    json(200, #{status => <<"ok">>,
                version => list_to_binary(hello_erl_config:version()),
                migrations => Migrations,
                os_pid => list_to_binary(os:getpid()),
                node => atom_to_binary(node())});
route("GET", "/") ->
    {200, "text/plain; charset=utf-8",
     [hello_erl_config:greeting(), " from hello_erl ", hello_erl_config:version(), "\n"]};
route("GET", "/config") ->
    {Sha, Bytes} = case hello_erl_config:secret_digest() of
        undefined -> {null, 0};
        Digest -> Digest
    end,
    json(200, #{greeting => unicode:characters_to_binary(hello_erl_config:greeting()),
                secret_sha256 => Sha, secret_bytes => Bytes, port => hello_erl_config:port()});
route(_, Path) when Path =:= "/health"; Path =:= "/config"; Path =:= "/" ->
    json(405, #{status => <<"method not allowed">>});
route(_, _) ->
    json(404, #{status => <<"not found">>}).

json(Code, Term) -> {Code, "application/json", [encode(Term), $\n]}.

%% A tiny JSON encoder: maps with atom keys, lists, binaries, integers, booleans, null.
encode(null) -> <<"null">>;
encode(true) -> <<"true">>;
encode(false) -> <<"false">>;
encode(N) when is_integer(N) -> integer_to_binary(N);
encode(B) when is_binary(B) -> [$", escape(B), $"];
encode(L) when is_list(L) -> [$[, lists:join($,, [encode(E) || E <- L]), $]];
encode(M) when is_map(M) ->
    Pairs = [[encode(atom_to_binary(K)), $:, encode(V)] || {K, V} <- lists:sort(maps:to_list(M))],
    [${, lists:join($,, Pairs), $}].

escape(B) -> [esc(C) || <<C/utf8>> <= B].

esc($") -> <<"\\\"">>;
esc($\\) -> <<"\\\\">>;
esc(C) when C < 16#20 -> io_lib:format("\\u~4.16.0b", [C]);
esc(C) -> <<C/utf8>>.
