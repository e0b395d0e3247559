// The admin's live queue: re-reads the queue state about once a second and redraws it.
// Values are set with textContent (prompts are user input), never as HTML.
(function () {
  "use strict";
  const root = document.getElementById("content-main");
  const stateUrl = root.dataset.stateUrl;
  const csrf = root.querySelector("input[name=csrfmiddlewaretoken]").value;
  const running = document.getElementById("queue-running");
  const pendingBody = document.querySelector("#queue-pending tbody");
  const pendingTotal = document.getElementById("queue-pending-total");
  const updated = document.getElementById("queue-updated");
  const REFRESH_MS = 1000;

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([key, value]) => {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    });
    (children || []).forEach((child) => node.appendChild(child));
    return node;
  }

  function cancelButton(task) {
    const button = el("button", { type: "button", class: "task-cancel", text: "Cancel" });
    button.addEventListener("click", async () => {
      button.disabled = true;
      button.textContent = "Canceling…";
      await fetch(task.cancel_url, {
        method: "POST",
        headers: { "X-CSRFToken": csrf, "X-Requested-With": "fetch" },
        credentials: "same-origin",
      });
      refresh();
    });
    return button;
  }

  function ago(mills) {
    const seconds = Math.max(0, Math.round((Date.now() - mills) / 1000));
    return seconds < 90 ? seconds + " s" : Math.round(seconds / 60) + " min";
  }

  function runningCard(task) {
    const preview = el("img", { class: "queue-preview", alt: "preview" });
    if (task.preview) preview.src = task.preview;
    const bar = el("span");
    bar.style.width = task.progress + "%";
    const prompt = el("div", { class: "queue-prompt" }, [
      el("a", { href: task.admin_url, text: "#" + task.id }),
      document.createTextNode(" " + (task.prompt || "(no prompt)")),
    ]);
    const body = el("div", { class: "queue-body" }, [
      prompt,
      el("div", { class: "queue-progress", role: "progressbar", "aria-valuenow": task.progress,
        "aria-valuemin": 0, "aria-valuemax": 100 }, [bar]),
      el("div", { class: "queue-message", text: task.progress + "% · " + (task.message || "") }),
      cancelButton(task),
    ]);
    return el("div", { class: "queue-card", "data-task-id": task.task_id }, [preview, body]);
  }

  function pendingRow(task) {
    return el("tr", { "data-task-id": task.task_id }, [
      el("td", {}, [el("a", { href: task.admin_url, text: String(task.id) })]),
      el("td", { text: task.prompt }),
      el("td", { text: task.performance }),
      el("td", { text: task.aspect_ratio }),
      el("td", { text: String(task.image_number) }),
      el("td", { text: ago(task.in_queue_mills) }),
      el("td", {}, [cancelButton(task)]),
    ]);
  }

  function render(state) {
    running.replaceChildren(...(state.running.length
      ? state.running.map(runningCard)
      : [el("p", { class: "queue-empty", text: "No task is running." })]));
    pendingBody.replaceChildren(...(state.pending.length
      ? state.pending.map(pendingRow)
      : [el("tr", { class: "queue-empty" }, [el("td", { colspan: 7, text: "Nothing is waiting." })])]));
    pendingTotal.textContent = "(" + state.pending_total + ")";
    updated.textContent = "Updated " + new Date().toLocaleTimeString() + "; refreshes every second.";
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      const response = await fetch(stateUrl, { credentials: "same-origin" });
      if (response.ok) render(await response.json());
      else updated.textContent = "Could not refresh (HTTP " + response.status + ").";
    } catch (error) {
      updated.textContent = "Could not refresh: " + error;
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }
  refresh();
})();
