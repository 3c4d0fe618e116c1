// GraphiQL for DataGate: queries and mutations over HTTP, subscriptions over
// graphql-transport-ws on the same path. Put {"Authorization": "Bearer TOKEN"} in the
// Headers tab (print a token with `manage.py datagate_token USER --scope "read write topics"`);
// the websocket sends the same headers as its connection_init payload.
(function () {
  "use strict";
  var here = window.location;
  var wsUrl = (here.protocol === "https:" ? "wss://" : "ws://") + here.host + here.pathname;
  var headers = {};
  function parseHeaders(text) {
    try {
      var parsed = JSON.parse(text || "{}");
      headers = parsed && typeof parsed === "object" ? parsed : {};
    } catch (ignored) {
      headers = {};
    }
  }
  parseHeaders(window.localStorage.getItem("graphiql:headers"));
  var wsClient = graphqlWs.createClient({
    url: wsUrl,
    lazy: true,
    connectionParams: function () { return headers; },
  });
  var fetcher = GraphiQL.createFetcher({ url: here.pathname, wsClient: wsClient });
  var defaultHeaders = JSON.stringify({ Authorization: "Bearer TOKEN" }, null, 2);
  ReactDOM.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultHeaders: defaultHeaders,
      headerEditorEnabled: true,
      shouldPersistHeaders: true,
      onEditHeaders: parseHeaders,
      defaultQuery:
        "# DataGate GraphQL: set your token in Headers below, then run.\n" +
        "query {\n  collections(tenant: \"demo\") { name markers { seq epoch } }\n}\n",
    }),
    document.getElementById("graphiql")
  );
})();
